#!/bin/sh
# Checker of sup-restart.yml (pid: host): waits for `crash` to reach crashloop, SIGKILLs
# `victim`, reports every container's state, then asks for the power off through keelctl.
. /sup/lib.sh
wait_status crash 120 crashloop && echo CHECK crashloop_seen=1
before=$(pid_of victim)
echo "CHECK victim_pid_before=$before"
kill -9 "$before"
# Back within its first backoff (100 ms) plus a container start.
i=0
while [ "$i" -lt 40 ]; do
  after=$(pid_of victim)
  [ "$(status_of victim)" = running ] && [ "$after" != "$before" ] && [ "$after" != 0 ] && break
  sleep 0.25
  i=$((i + 1))
done
echo "CHECK victim_pid_after=$after"
report_list list
echo CHECK poweroff=1
keelctl poweroff
sleep 100
