#!/bin/sh
# Checker of sup-stress.yml (pid: host). Results are kept in variables and printed at the end,
# once the flood is stopped and the console drains again.
. /sup/lib.sh

# Zombies anywhere in the machine: state Z in /proc/*/stat (the field after the last ")").
zombies() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk '{ sub(/^.*\) /, ""); if ($1 == "Z") n++ } END { print n + 0 }'
}
rss1() { awk '/^VmRSS:/ { print $2 }' /proc/1/status; }

# 1. The flood: wait until its log rotated twice, then time 20 `keelctl list` calls.
i=0
while [ ! -e /var/log/flood.log.2 ] && [ "$i" -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
rotated=$([ -e /var/log/flood.log.2 ] && echo 1 || echo 0)
lat=""
n=0
while [ "$n" -lt 20 ]; do
  t0=$(now_ms)
  keelctl list > /dev/null || lat="$lat,fail"
  t1=$(now_ms)
  lat="$lat,$((t1 - t0))"
  n=$((n + 1))
done
# Sizes while the flood still runs, then once more after it stopped.
logs_during=$(ls -l /var/log/ | awk '$NF ~ /^flood\.log/ { printf "%s%s:%s", s, $NF, $5; s = "," }')
keelctl stop flood > /dev/null
wait_status flood 60 stopped
sleep 1
logs_after=$(ls -l /var/log/ | awk '$NF ~ /^flood\.log/ { printf "%s%s:%s", s, $NF, $5; s = "," }')
# The same 20 calls with the flood stopped, for comparison.
quiet=""
n=0
while [ "$n" -lt 20 ]; do
  t0=$(now_ms)
  keelctl list > /dev/null || quiet="$quiet,fail"
  t1=$(now_ms)
  quiet="$quiet,$((t1 - t0))"
  n=$((n + 1))
done

# 2. Orphans: PID 1's RSS and the zombie count before, 10,000 orphans reparented to PID 1
#    (each subshell exits before its background child), then the pid namespace torn down.
sleep 1
rss_before=$(rss1)
z_before=$(zombies)
t0=$(now_ms)
i=0
while [ "$i" -lt 10000 ]; do
  (true &)
  i=$((i + 1))
done
t1=$(now_ms)
touch /run/sup-go
wait_status nsorphans 1200 stopped && ns_done=1 || ns_done=0
# Zombies are reaped as they come; a few may be in flight for a moment.
i=0
while [ "$(zombies)" != 0 ] && [ "$i" -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
sleep 1
z_after=$(zombies)
rss_after=$(rss1)

# 3. The OOM-killed service, restarted (it keeps being killed).
wait_hog=0
while [ "$wait_hog" -lt 60 ]; do
  [ "$(keelctl list | awk '$1 == "hog" { print $NF }')" -ge 2 ] 2>/dev/null && break
  sleep 0.5
  wait_hog=$((wait_hog + 1))
done

echo "CHECK rotated=$rotated"
echo "CHECK list_ms=${lat#,}"
echo "CHECK quiet_list_ms=${quiet#,}"
echo "CHECK logs_during=$logs_during"
echo "CHECK logs_after=$logs_after"
echo "CHECK orphans_ms=$((t1 - t0))"
echo "CHECK ns_done=$ns_done"
echo "CHECK zombies_before=$z_before"
echo "CHECK zombies_after=$z_after"
echo "CHECK rss_before_kb=$rss_before"
echo "CHECK rss_after_kb=$rss_after"
report_list list
echo CHECK done=1
