#!/usr/bin/env bash
# Builds everything, then live-patches a running program end to end:
# prepare a library, start a program on it with the runtime preloaded,
# pack a live patch, apply it, revert it, all with the same PID.
# Everything it makes goes to demo-out/ (safe to delete).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/demo-out
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "building ulp and the runtime (scripts/build-release.sh: cargo build --release)"
bash scripts/build-release.sh -q
ulp=$root/target/release/ulp
rm -rf "$out" && mkdir -p "$out"
cp target/release/libpulp.so "$out/libpulp.so.0"
cd "$out"

say "1. prepare the library: compile with patchable entries, install it as distributions do, then 'ulp post'"
run gcc -O2 -fPIC -shared -fno-inline -fpatchable-function-entry=16,14 \
  -Wl,--build-id -Wl,-soname,libulpdemo.so.1 -o libulpdemo.so.1.0.0 "$root/fixtures/libulpdemo.c"
run ln -s libulpdemo.so.1.0.0 libulpdemo.so.1
run "$ulp" post libulpdemo.so.1
run "$ulp" livepatchable libulpdemo.so.1
run gcc -O2 -pthread -o demo_prog "$root/fixtures/demo_prog.c" -L. -l:libulpdemo.so.1 '-Wl,-rpath,$ORIGIN'

say "2. start the program with the runtime preloaded"
coproc PROG { LD_PRELOAD="$out/libpulp.so.0" exec ./demo_prog; }
prog_pid=$PROG_PID
trap 'kill $prog_pid 2>/dev/null || true' EXIT
read -r -t 10 ready <&"${PROG[0]}"
echo "started demo_prog: $ready"
ask() {
  echo "$1" >&"${PROG[1]}"
  local answer
  read -r -t 10 answer <&"${PROG[0]}"
  printf '  %-8s -> %s\n' "$1" "$answer"
}
show() { echo "$1"; ask pid; ask answer; ask word; }
show "the running program, before:"

say "3. build the live patch: new functions in C, a .dsc, 'ulp packer'"
run gcc -O2 -fPIC -shared -Wl,--build-id -o demo_livepatch.so "$root/fixtures/demo_livepatch.c"
cat > demo_livepatch.dsc <<DSC
! Demo fix for CVE-2026-0001.
demo_livepatch.so
@libulpdemo.so.1
demo_answer:new_demo_answer
demo_word:new_demo_word
DSC
cat demo_livepatch.dsc
run "$ulp" packer demo_livepatch.dsc
run "$ulp" dump demo_livepatch.so

say "4. apply it to the running process"
run "$ulp" trigger -p "$prog_pid" demo_livepatch.so
show "the same process, after:"
run "$ulp" patches -p "$prog_pid"

say "5. revert it"
run "$ulp" trigger -p "$prog_pid" --revert demo_livepatch.so
show "the same process, after revert:"
run "$ulp" messages -p "$prog_pid"

echo quit >&"${PROG[1]}"
wait "$prog_pid" 2>/dev/null || true
trap - EXIT
say "done: demo_prog (pid $prog_pid) changed behaviour and changed back without a restart"
