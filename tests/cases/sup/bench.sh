#!/bin/sh
# Checker and benchmark of sup-bench.yml (pid: host, every capability, in the keel/runtimes
# image). Prints `CHECK key=value` lines; the test asserts on them and the numbers go into
# docs/benchmarks.md. Times come from /proc/uptime: 10 ms resolution.
/bin/busybox mkdir -p /tmp/bin && /bin/busybox --install -s /tmp/bin
export PATH=/tmp/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /sup/lib.sh
RUNS=25
SOCK=/run/keel/ctl/control.sock
wait_status idle20 120 running

# --- Hostile control-socket clients; `keelctl list` must work after each.
alive() { keelctl list > /dev/null 2>&1 && echo ok || echo dead; }
oneline() { tr '\n' ' ' | head -c 300; }
echo "CHECK garbage=$(echo 'this is not json{' | socat -t 3 - UNIX-CONNECT:$SOCK 2>&1 | oneline)"
echo "CHECK garbage_alive=$(alive)"
t0=$(now_ms)
big=$(head -c 100000000 /dev/zero | tr '\0' a | socat -t 3 - UNIX-CONNECT:$SOCK 2>&1 | oneline)
t1=$(now_ms)
echo "CHECK big=$big"
echo "CHECK big_ms=$((t1 - t0))"
echo "CHECK big_alive=$(alive)"
echo "CHECK half=$(printf '{"request":"li' | socat -t 1 - UNIX-CONNECT:$SOCK 2>&1 | oneline)"
echo "CHECK half_alive=$(alive)"
# A client that sends half a request and then stalls, still connected.
(printf '{"request":"li'; sleep 15) | socat - UNIX-CONNECT:$SOCK > /dev/null 2>&1 &
sleep 0.5
t0=$(now_ms)
stalled=$(alive)
t1=$(now_ms)
echo "CHECK stalled_alive=$stalled"
echo "CHECK stalled_list_ms=$((t1 - t0))"
# Non-root (uid 65534): the modes (socket 0600, its directory 0700) refuse first; with them
# opened, PID 1's peer check does.
echo "CHECK nobody_mode=$(su -s /bin/sh nobody -c "/usr/bin/keelctl list" 2>&1 | oneline)"
chmod 0666 $SOCK
chmod 0755 ${SOCK%/*}
echo "CHECK nobody_peer=$(su -s /bin/sh nobody -c "/usr/bin/keelctl list" 2>&1 | oneline)"
chmod 0700 ${SOCK%/*}
chmod 0600 $SOCK
echo "CHECK nobody_alive=$(alive)"
echo "CHECK socket_mode=$(stat -c %a $SOCK)"

# --- create→start→delete latency on one bundle: /bin/true in busybox, crun's default spec.
B=/tmp/bundle
# cgroup v2 keeps processes out of inner nodes: this script moves to a leaf first.
mkdir -p /sys/fs/cgroup/runner
echo $$ > /sys/fs/cgroup/runner/cgroup.procs
echo "CHECK cgroup=$(cat /proc/self/cgroup)"
mkdir -p $B/rootfs/bin $B/rootfs/proc $B/rootfs/dev $B/rootfs/sys $B/rootfs/tmp
cp /bin/busybox $B/rootfs/bin/busybox
ln -s busybox $B/rootfs/bin/true
(cd $B && crun spec)
# An absolute cgroup (the default is relative to this container's cgroup namespace).
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"\/bin\/true"/; s/"linux": {/"linux": { "cgroupsPath": "\/supbench",/' $B/config.json
echo "CHECK bundle_args=$(grep -A2 '"args"' $B/config.json | oneline)"
echo "CHECK bundle_cgroup=$(grep -o '"cgroupsPath": "[^"]*"' $B/config.json)"
bench() {
  name=$1
  shift
  out=""
  failed=0
  i=0
  while [ "$i" -lt "$RUNS" ]; do
    t0=$(now_ms)
    "$@" "b-$name-$i" > /dev/null 2> /tmp/$name.err || failed=$((failed + 1))
    t1=$(now_ms)
    out="$out,$((t1 - t0))"
    i=$((i + 1))
  done
  echo "CHECK bench_$name=${out#,}"
  echo "CHECK bench_${name}_failed=$failed"
  echo "CHECK bench_${name}_err=$(tr '\n' ' ' < /tmp/$name.err | tail -c 600)"
}
bench keel /usr/libexec/keel-shim run $B
bench crun crun run --bundle $B
bench runc runc run --bundle $B
# keel through the supervisor: `keelctl start once`, then polling until it stopped again.
out=""
i=0
while [ "$i" -lt "$RUNS" ]; do
  t0=$(now_ms)
  keelctl start once > /dev/null
  while [ "$(status_of once)" != stopped ]; do :; done
  t1=$(now_ms)
  out="$out,$((t1 - t0))"
  i=$((i + 1))
done
echo "CHECK bench_keelctl=${out#,}"

# --- Supervisor memory: PSS of PID 1 and of every shim, with 20 services, then 1, then 20.
pss() {
  init=$(awk '/^Pss:/ { print $2 }' /proc/1/smaps_rollup)
  shims=0
  n=0
  for p in /proc/[0-9]*; do
    if [ "$(cat $p/comm 2> /dev/null)" = keel-shim ]; then
      kb=$(awk '/^Pss:/ { print $2 }' $p/smaps_rollup 2> /dev/null)
      shims=$((shims + ${kb:-0}))
      n=$((n + 1))
    fi
  done
  echo "$init:$shims:$n"
}
others=$(seq -w 2 20)
echo "CHECK pss_20_first=$(pss)"
for i in $others; do keelctl stop idle$i > /dev/null; done
for i in $others; do wait_status idle$i 60 stopped; done
sleep 1
echo "CHECK pss_1=$(pss)"
for i in $others; do keelctl start idle$i > /dev/null; done
for i in $others; do wait_status idle$i 120 running; done
sleep 1
echo "CHECK pss_20=$(pss)"

# --- Shutdown with 5 cooperative services (idle01..idle05) and this one.
for i in $(seq -w 6 20); do keelctl stop idle$i > /dev/null; done
for i in $(seq -w 6 20); do wait_status idle$i 60 stopped; done
report_list list
echo CHECK poweroff=1
keelctl poweroff
sleep 100
