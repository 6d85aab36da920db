#!/usr/bin/env bash
# Mutation testing of the parser, the requantization, the planner and the portable kernels with
# cargo-mutants (docs/RELIABILITY.md, "Mutation testing"). Each file runs on its own, tested by
# its own package's tests in the `mutants` profile (the test profile at opt-level 1: the
# runtime's lib tests take seconds instead of minutes).
#
#   scripts/mutants.sh                      every file below, whole
#   scripts/mutants.sh FILE...              only these files
#   scripts/mutants.sh --in-diff BASE       only the mutants on lines changed since git ref BASE
#                                           (committed or not) in the files below
#   ... -- ARGS                             more cargo-mutants arguments, e.g. `--shard 1/4` or
#                                           `--re 'in pack_bits'`
#
# Fails (exit 1) when a mutant survives that is not listed as equivalent in
# docs/RELIABILITY.md (the list between the `mutants-equivalent` markers). A mutant is named
# as cargo-mutants names it, with the source line it mutates instead of its line and column
# (so that the names survive edits elsewhere in the file):
#   FILE: replace > with >= in FUNCTION @ if total > u64::from(u32::MAX) {
# Results: target/mutants/<file>/mutants.out; the names of survivors in target/mutants/*.txt.
# Needs cargo-mutants (`cargo install --locked cargo-mutants`; measured with 27.1.0).
set -euo pipefail
cd "${MUTANTS_ROOT:-$(dirname "$0")/..}"

FILES=(
    format/src/validate.rs
    format/src/pack.rs
    format/src/model.rs
    runtime/src/quant.rs
    runtime/src/plan.rs
    runtime/src/kernels/portable.rs
)

base=""
files=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --in-diff)
        base="$2"
        shift 2
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *)
        files+=("$1")
        shift
        ;;
    esac
done
[ ${#files[@]} -gt 0 ] || files=("${FILES[@]}")

command -v cargo-mutants >/dev/null || {
    echo "cargo-mutants is missing: cargo install --locked cargo-mutants" >&2
    exit 2
}

out=target/mutants
mkdir -p "$out"
# The mutated trees build in their own target directory (kept between runs, so only the
# mutated crate and its dependents rebuild).
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$PWD/target/mutants/build}"

# Known equivalent mutants, one name a line.
equivalent="$out/equivalent.txt"
sed -n '/<!-- mutants-equivalent:begin -->/,/<!-- mutants-equivalent:end -->/p' \
    docs/RELIABILITY.md | sed -n 's/^- `\([^`]*\)`.*/\1/p' | sort -u >"$equivalent"

# `FILE:LINE:COL: DESCRIPTION` -> `FILE: DESCRIPTION @ SOURCE LINE` (trimmed, white space
# runs as one space).
names() {
    while IFS= read -r m; do
        file=${m%%:*}
        rest=${m#*:}
        line=${rest%%:*}
        desc=${rest#*:*: }
        src=$(sed -n "${line}p" "$file" | sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//; s/[[:space:]]+/ /g')
        printf '%s: %s @ %s\n' "$file" "$desc" "$src"
    done
}

diff_args=()
if [ -n "$base" ]; then
    git diff "$base" -- "${files[@]}" >"$out/changes.diff"
    if [ ! -s "$out/changes.diff" ]; then
        echo "no changes to ${files[*]} since $base"
        exit 0
    fi
    diff_args=(--in-diff "$out/changes.diff")
    # Only the files that changed.
    mapfile -t files < <(git diff --name-only "$base" -- "${files[@]}")
fi

status=0
: >"$out/new-survivors.txt"
for f in "${files[@]}"; do
    # The runtime's mutants run its lib tests only: the other target (`no_std_build`) checks
    # that it compiles without std, which no mutant changes.
    case "$f" in
    format/*) pkg=(--package slb-format) ;;
    runtime/*) pkg=(--package slb-runtime --cargo-test-arg=--lib) ;;
    *)
        echo "$f: not in slb-format or slb-runtime" >&2
        exit 2
        ;;
    esac
    dir="$out/$(echo "$f" | tr / _)"
    # No results of an earlier run may stand for this one (cargo-mutants writes nothing when
    # no mutant is left to test, e.g. a diff that only touches tests).
    rm -rf "$dir"
    start=$(date +%s)
    rc=0
    cargo mutants "${pkg[@]}" --file "$f" --profile mutants \
        --output "$dir" ${diff_args[@]+"${diff_args[@]}"} ${extra[@]+"${extra[@]}"} || rc=$?
    # 0: all caught; 2: some missed; 3: some timed out (counted as caught); 4: baseline failed.
    case $rc in
    0 | 2 | 3) ;;
    *)
        echo "$f: cargo mutants failed ($rc)" >&2
        status=1
        continue
        ;;
    esac
    m="$dir/mutants.out"
    if [ ! -f "$m/outcomes.json" ]; then
        echo "$f: no mutants to test"
        continue
    fi
    n() { [ -f "$m/$1" ] && wc -l <"$m/$1" || echo 0; }
    echo "$f: $(n caught.txt) caught, $(n missed.txt) missed, $(n timeout.txt) timeout," \
        "$(n unviable.txt) unviable in $(($(date +%s) - start)) s"
    if [ -f "$m/missed.txt" ]; then
        names <"$m/missed.txt" | sort -u >"$out/$(basename "$dir").missed.txt"
        comm -23 "$out/$(basename "$dir").missed.txt" "$equivalent" |
            tee -a "$out/new-survivors.txt"
    fi
done
if [ -s "$out/new-survivors.txt" ]; then
    echo "surviving mutants not listed as equivalent in docs/RELIABILITY.md:" >&2
    cat "$out/new-survivors.txt" >&2
    status=1
fi
exit $status
