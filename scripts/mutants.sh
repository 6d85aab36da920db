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
#   scripts/mutants.sh --mcu [FILE...]      the mutants of the code compiled only for a Cortex-M,
#                                           each tested by the Cortex-M test under QEMU
#                                           (scripts/mcu-test.sh, about a minute a mutant)
#   scripts/mutants.sh --ci                 what CI runs (scripts/test.sh), in about
#                                           MUTANTS_CI_SECONDS (default 300): the mutants on the
#                                           lines the last commit changed (HEAD^), a rotating
#                                           shard of them if they are too many, then one slice
#                                           of the rotation through every file (see below)
#   ... -- ARGS                             more cargo-mutants arguments, e.g. `--shard 1/4` or
#                                           `--re 'in pack_bits'`
#
# Fails (exit 1) when a mutant survives that is not listed as equivalent in
# docs/RELIABILITY.md (the list between the `mutants-equivalent` markers). A mutant is named
# as cargo-mutants names it, with the source line it mutates instead of its line and column
# (so that the names survive edits elsewhere in the file):
#   FILE: replace > with >= in FUNCTION @ if total > u64::from(u32::MAX) {
# Results: target/mutants/<file>/mutants.out; the names of survivors in target/mutants/*.txt.
# Needs cargo-mutants (`cargo install --locked cargo-mutants@27.1.0`).
#
# Code compiled only for a Cortex-M (a function under `#[cfg(target_arch = "arm")]` or
# `#[cfg(all(target_arch = "arm", ...))]`, e.g. the `USADA8` twin of `usada8`) is never built by
# the host's tests, so cargo-mutants would call its mutants missed: the ordinary runs leave them
# out (`--exclude-re`), and `--mcu` applies each in turn and runs the Cortex-M test, which must
# fail (the board's logits no longer equal the host's).
#
# --ci: the last commit's mutants come first (`git diff HEAD^`, the first parent for a merge);
# when their estimated time (seconds_per_mutant below) is over the budget, only shard
# `index mod n` of n, index being `git rev-list --count HEAD` (or MUTANTS_CI_INDEX). Then, if
# the budget has room left, the rotation: every file cut into shards of about
# ROTATION_SECONDS of estimated work, and slice number `index mod (their count)` run, so that
# commits that land test the next slice in turn and, over about 150 of them, every mutant of
# every file. Every cargo-mutants run also stops at a hard cap (the budget and 60 s, in all);
# what it did not reach is reported, not failed.
set -euo pipefail
cd "${MUTANTS_ROOT:-$(dirname "$0")/..}"

FILES=(
    format/src/validate.rs
    format/src/pack.rs
    format/src/model.rs
    runtime/src/quant.rs
    runtime/src/plan.rs
    runtime/src/kernels/portable/mod.rs
    runtime/src/kernels/portable/int8.rs
    runtime/src/kernels/portable/bits.rs
)
# Estimated seconds per mutant (a build and the package's tests in the mutants profile, one job,
# 2 cores) and for the unmutated baseline each cargo-mutants run starts with.
seconds_per_mutant() { case "$1" in format/*) echo 4 ;; *) echo 15 ;; esac; }
seconds_of_baseline() { case "$1" in format/*) echo 15 ;; *) echo 60 ;; esac; }
ROTATION_SECONDS=120
# Files not yet mutated whole (docs/RELIABILITY.md, "Mutation testing"): a survivor the rotation
# finds there is an old gap, not the change's, and is reported without failing the run until
# the file's whole run has been done and its survivors killed or listed. None now: add a file
# that joins FILES here until its first whole run.
NOT_YET_WHOLE=()

base=""
ci=0
mcu=0
files=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --in-diff)
        base="$2"
        shift 2
        ;;
    --ci)
        ci=1
        shift
        ;;
    --mcu)
        mcu=1
        shift
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
    echo "cargo-mutants is missing: cargo install --locked cargo-mutants@27.1.0" >&2
    exit 2
}

out=target/mutants
mkdir -p "$out"
# The mutated trees build in their own target directory (kept between runs, so only the
# mutated crate and its dependents rebuild). Keep it apart from the one ordinary builds use:
# cargo names a workspace's crates by their path inside it, so the last mutant's build of the
# `mutants` profile there looks fresh to a later `cargo test --profile mutants` of the real
# tree whose files are older, which then runs the mutant.
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

# The package of FILE, as cargo-mutants arguments (into `pkg`). The runtime's mutants run its
# lib tests only: the other target (`no_std_build`) checks that it compiles without std, which
# no mutant changes.
package_of() {
    case "$1" in
    format/*) pkg=(--package slb-format) ;;
    runtime/*) pkg=(--package slb-runtime --cargo-test-arg=--lib) ;;
    *)
        echo "$1: not in slb-format or slb-runtime" >&2
        exit 2
        ;;
    esac
}

# The number of mutants of FILE that cargo-mutants ARGS... select (no build: a parse).
count() {
    local f=$1 pkg
    shift
    package_of "$f"
    cargo mutants --list "${pkg[@]}" --file "$f" "$@" | wc -l
}

# The mutants of FILE in functions compiled only for a Cortex-M (see the top), as JSON lines
# `{"name": ..., "diff": ...}` of cargo-mutants' listing.
off_host() {
    local f=$1 pkg
    package_of "$f"
    cargo mutants --list --json --diff "${pkg[@]}" --file "$f" | python3 -c '
import json, re, sys
src = open(sys.argv[1]).read().splitlines()
fn = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?fn\s")
arm = re.compile(r"#\[cfg\((all\()?target_arch\s*=\s*\"arm\"")
for m in json.load(sys.stdin):
    f = m.get("function")
    if not f:
        continue
    i = f["span"]["start"]["line"] - 1
    attrs = []
    while i < len(src) and not fn.match(src[i]):
        attrs.append(src[i])
        i += 1
    if any(arm.search(a) for a in attrs):
        print(json.dumps({"name": m["name"], "diff": m["diff"]}))
' "$f"
}

# `--exclude-re` arguments for the off-host mutants of FILE (into `excl`).
exclusions() {
    local name
    excl=()
    while IFS= read -r name; do
        excl+=(--exclude-re "^$(printf '%s' "$name" | sed 's/[][\.+*?(){}|^$]/\\&/g')\$")
    done < <(off_host "$1" | python3 -c 'import json, sys; [print(json.loads(l)["name"]) for l in sys.stdin]')
}

# Run cargo mutants on FILE with ARGS..., in $cap seconds at most when set; report its counts
# and add the survivors not known as equivalent to $survivors (new-survivors.txt).
status=0
cap=""
survivors="$out/new-survivors.txt"
: >"$survivors"
: >"$out/old-gaps.txt"
run_file() {
    local f=$1 pkg dir start rc m excl
    shift
    exclusions "$f"
    set -- ${excl[@]+"${excl[@]}"} "$@"
    package_of "$f"
    dir="$out/$(echo "$f" | tr / _)"
    # No results of an earlier run may stand for this one (cargo-mutants writes nothing when
    # no mutant is left to test, e.g. a diff that only touches tests).
    rm -rf "$dir"
    start=$(date +%s)
    rc=0
    if [ -n "$cap" ]; then
        # SIGINT: cargo-mutants stops, writes what it found so far and exits.
        timeout --signal=INT --kill-after=20 "$cap" \
            cargo mutants "${pkg[@]}" --file "$f" --profile mutants --output "$dir" "$@" || rc=$?
    else
        cargo mutants "${pkg[@]}" --file "$f" --profile mutants --output "$dir" "$@" || rc=$?
    fi
    # 0: all caught; 2: some missed; 3: some timed out (counted as caught); 4: baseline failed.
    case $rc in
    0 | 2 | 3) ;;
    124 | 130 | 137)
        echo "$f: stopped at the time cap of $cap s; the mutants not reached are untested" >&2
        ;;
    *)
        echo "$f: cargo mutants failed ($rc)" >&2
        status=1
        return
        ;;
    esac
    m="$dir/mutants.out"
    if [ ! -f "$m/outcomes.json" ] && [ ! -f "$m/caught.txt" ] && [ ! -f "$m/missed.txt" ]; then
        echo "$f: no mutants tested"
        return
    fi
    n() { if [ -f "$m/$1" ]; then wc -l <"$m/$1"; else echo 0; fi; }
    echo "$f: $(n caught.txt) caught, $(n missed.txt) missed, $(n timeout.txt) timeout," \
        "$(n unviable.txt) unviable in $(($(date +%s) - start)) s"
    if [ -f "$m/missed.txt" ]; then
        names <"$m/missed.txt" | sort -u >"$out/$(basename "$dir").missed.txt"
        comm -23 "$out/$(basename "$dir").missed.txt" "$equivalent" |
            tee -a "$survivors"
    fi
}

# The files of `files` changed since $base (into `files`), their diff in $out/changes.diff;
# false when none changed.
diff_since() {
    git diff "$base" -- "${files[@]}" >"$out/changes.diff"
    [ -s "$out/changes.diff" ] || return 1
    mapfile -t files < <(git diff --name-only "$base" -- "${files[@]}")
}

finish() {
    if [ -s "$out/old-gaps.txt" ]; then
        echo "surviving mutants in files not yet mutated whole (reported, not failed):" >&2
        cat "$out/old-gaps.txt" >&2
    fi
    if [ -s "$out/new-survivors.txt" ]; then
        echo "surviving mutants not listed as equivalent in docs/RELIABILITY.md:" >&2
        cat "$out/new-survivors.txt" >&2
        status=1
    fi
    exit $status
}

# --mcu: each off-host mutant applied to the tree in turn (the file restored after each, and on
# exit), then scripts/mcu-test.sh, which must fail; it must pass on the unmutated tree first.
if [ $mcu = 1 ]; then
    export CARGO_TARGET_DIR="${MCU_TARGET_DIR:-$PWD/target/mcu-host}"
    backup="$out/mcu-backup"
    mkdir -p "$backup"
    restore() { [ -z "${mutated:-}" ] || cp "$backup/file" "$mutated"; }
    trap restore EXIT INT TERM
    if ! scripts/mcu-test.sh >"$out/mcu-baseline.log" 2>&1; then
        echo "mutants --mcu: the Cortex-M test fails on the unmutated tree ($out/mcu-baseline.log)" >&2
        exit 2
    fi
    : >"$out/mcu-missed.txt"
    for f in "${files[@]}"; do
        off_host "$f" >"$out/mcu-mutants.jsonl"
        while IFS= read -r m; do
            name=$(printf '%s' "$m" | python3 -c 'import json, sys; print(json.load(sys.stdin)["name"])')
            printf '%s' "$m" | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["diff"])' >"$out/mcu-mutant.diff"
            cp "$f" "$backup/file"
            mutated=$f
            patch -s "$f" <"$out/mcu-mutant.diff"
            start=$(date +%s)
            if scripts/mcu-test.sh >"$out/mcu-mutant.log" 2>&1; then
                verdict=MISSED
                names <<<"$name" >>"$out/mcu-missed.txt"
            elif grep -q 'error\[E\|could not compile' "$out/mcu-mutant.log"; then
                verdict=unviable
            else
                verdict=caught
            fi
            restore
            mutated=""
            echo "$verdict in $(($(date +%s) - start)) s: $name"
        done <"$out/mcu-mutants.jsonl"
    done
    if [ -s "$out/mcu-missed.txt" ]; then
        echo "off-host mutants the Cortex-M test does not notice:" >&2
        cat "$out/mcu-missed.txt" >&2
        exit 1
    fi
    exit 0
fi

if [ $ci = 0 ]; then
    diff_args=()
    if [ -n "$base" ]; then
        if ! diff_since; then
            echo "no changes to ${files[*]} since $base"
            exit 0
        fi
        diff_args=(--in-diff "$out/changes.diff")
    fi
    for f in "${files[@]}"; do
        run_file "$f" ${diff_args[@]+"${diff_args[@]}"} ${extra[@]+"${extra[@]}"}
    done
    finish
fi

# --ci
budget=${MUTANTS_CI_SECONDS:-300}
index=${MUTANTS_CI_INDEX:-$(git rev-list --count HEAD)}
t0=$(date +%s)
deadline=$((t0 + budget + 60))
# Seconds left before the hard cap (at least 1: `timeout 0` would mean no limit).
left() {
    local l=$((deadline - $(date +%s)))
    echo $((l > 1 ? l : 1))
}
# A fresh target directory first builds the dependencies in the mutants profile (90 s).
cold=0
[ -d "$CARGO_TARGET_DIR/mutants" ] || cold=90
echo "mutants --ci: budget $budget s, index $index$([ $cold = 0 ] || echo ', a cold target directory')"

# The rotation's slices: file f in n_f shards of about ROTATION_SECONDS of mutants each.
total=0
slices=()
for f in "${FILES[@]}"; do
    c=$(count "$f")
    n=$(((c * $(seconds_per_mutant "$f") + ROTATION_SECONDS - 1) / ROTATION_SECONDS))
    slices+=("$f $n")
    total=$((total + n))
done
# This run's slice: number `index mod total`, shard k of file f.
k=$((index % total))
for s in "${slices[@]}"; do
    read -r rot_file n <<<"$s"
    if [ "$k" -lt "$n" ]; then
        rot_shard="$k/$n"
        break
    fi
    k=$((k - n))
done
rot_est=$((ROTATION_SECONDS + $(seconds_of_baseline "$rot_file")))

# 1. The mutants on the lines the last commit changed, in the budget (at least 60 s).
base=HEAD^
if ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
    echo "no parent commit here (a root commit or a shallow clone): no diff to mutate"
elif ! diff_since; then
    echo "the last commit changes none of the mutated files"
else
    est=0
    declare -A nof
    for f in "${files[@]}"; do
        nof[$f]=$(count "$f" --in-diff "$out/changes.diff")
        [ "${nof[$f]}" -eq 0 ] ||
            est=$((est + $(seconds_of_baseline "$f") + nof[$f] * $(seconds_per_mutant "$f")))
    done
    room=$((budget - cold))
    room=$((room > 60 ? room : 60))
    shards=$(((est + room - 1) / room))
    shard_args=()
    if [ "$shards" -gt 1 ]; then
        shard_args=(--shard "$((index % shards))/$shards")
    fi
    echo "the last commit changes $(for f in "${files[@]}"; do printf '%s (%s mutants) ' "$f" "${nof[$f]}"; done)" \
        "- about $est s${shard_args[*]:+, over the $room s left for them: shard ${shard_args[1]}}"
    for f in "${files[@]}"; do
        [ "${nof[$f]}" -gt 0 ] || continue
        cap=$(left)
        run_file "$f" --in-diff "$out/changes.diff" ${shard_args[@]+"${shard_args[@]}"}
    done
fi

# 2. One slice of the rotation through every file, if the budget has room left for it.
spent=$(($(date +%s) - t0))
[ ! -d "$CARGO_TARGET_DIR/mutants" ] || cold=0
if [ $((spent + cold + rot_est)) -le "$budget" ]; then
    echo "rotation: slice $((index % total)) of $total: $rot_file shard $rot_shard"
    cap=$(left)
    for f in ${NOT_YET_WHOLE[@]+"${NOT_YET_WHOLE[@]}"}; do
        [ "$f" != "$rot_file" ] || survivors="$out/old-gaps.txt"
    done
    run_file "$rot_file" --shard "$rot_shard"
else
    echo "rotation: slice $((index % total)) of $total ($rot_file shard $rot_shard) skipped:" \
        "$spent s spent of $budget"
fi
echo "mutants --ci: $(($(date +%s) - t0)) s"
finish
