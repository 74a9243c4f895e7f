# Shared by format and mount (each package has a copy: sources must be inside the package).
# Device nodes are made from /sys: the container's /dev is its own.
bb=/bin/busybox

# node NAME: creates /dev/NAME for the block device NAME when missing.
node() {
  [ -b "/dev/$1" ] && return 0
  [ -r "/sys/class/block/$1/dev" ] || return 1
  mm=$($bb cat "/sys/class/block/$1/dev")
  $bb mknod "/dev/$1" b "${mm%%:*}" "${mm##*:}"
}

# nodes: creates /dev/NAME for every block device of /sys.
nodes() {
  for d in /sys/class/block/*; do node "${d##*/}" || true; done
}

# find_fs LABEL=L|UUID=U: prints the name of the block device holding that filesystem.
find_fs() {
  nodes
  found=$($bb findfs "$1" 2>/dev/null) || return 1
  echo "${found#/dev/}"
}
