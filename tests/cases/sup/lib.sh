# Shell helpers for the supervision checkers (sourced; busybox sh).

# `keelctl list --json`, one `CHECK <prefix>.<id>=<compact json>` line per container: short
# lines, so none is split or lost on the console.
report_list() {
  keelctl list --json | awk -v prefix="$1" '
    /^  \{/ { buf = "{"; id = ""; next }
    /^  \}/ { print "CHECK " prefix "." id "=" buf "}"; next }
    /^    "/ {
      line = $0; sub(/^ +/, "", line); buf = buf line
      if (line ~ /^"id": /) { id = line; sub(/^"id": "/, "", id); sub(/",?$/, "", id) }
    }'
}

# The STATUS column of `keelctl list` for container $1 ("stopped (3)" comes out as "stopped").
status_of() { keelctl list | awk -v n="$1" '$1 == n { print $3 }'; }

# The PID column of `keelctl list` for container $1.
pid_of() { keelctl list | awk -v n="$1" '$1 == n { print $2 }'; }

# Waits up to $2 half-seconds until container $1's status is $3; returns 1 if it never is
# (at once if the container failed and $3 is not "failed").
wait_status() {
  _i=0
  while [ "$_i" -lt "$2" ]; do
    _s=$(status_of "$1")
    [ "$_s" = "$3" ] && return 0
    [ "$_s" = failed ] && return 1
    sleep 0.5
    _i=$((_i + 1))
  done
  return 1
}

# Milliseconds since boot (10 ms resolution).
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
