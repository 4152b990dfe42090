#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through cargo-fuzz, on stable Rust) of
# every parser that reads peer bytes: request frames, reply frames, WAMP
# messages, SDP JSON, secure-channel handshake messages. Targets live in tests/fuzz/fuzz_targets.
#
#   scripts/fuzz.sh               # each target for 30 seconds
#   SECS=600 scripts/fuzz.sh      # each for ten minutes
#   scripts/fuzz.sh wamp_messages # one target
#
# The corpus starts from the Go Babble frames in tests/data/vectors and
# grows in target/fuzz-corpus/; a crash is saved in
# tests/fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SECS:-30}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(request_frames reply_frames wamp_messages sdp_json noise_handshake)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
fuzz=(cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none -O)
cargo fuzz build --fuzz-dir tests/fuzz --sanitizer none -O >&2

for target in "${targets[@]}"; do
  corpus=target/fuzz-corpus/$target
  mkdir -p "$corpus"
  case $target in
    request_frames) cp tests/data/vectors/*request*.bin "$corpus"/ ;;
    reply_frames) cp tests/data/vectors/*response*.bin "$corpus"/ ;;
    wamp_messages)
      printf '[8,48,1,{},"wamp.error.no_such_procedure"]\n[50,1,{},["answer"]]\n' >"$corpus/seed-result"
      printf '[68,9,1,{},["peer","{\\"type\\":\\"offer\\",\\"sdp\\":\\"v=0\\"}"]]\n[69,9,{}]\n' >"$corpus/seed-invocation" ;;
    sdp_json) printf '{"type":"offer","sdp":"v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\n"}' >"$corpus/seed-offer" ;;
  esac
  echo "== $target: ${secs}s" >&2
  "${fuzz[@]}" "$target" "$corpus" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|Done|==[0-9]+== ERROR|thread .* panicked|SUMMARY)" >&2
done
