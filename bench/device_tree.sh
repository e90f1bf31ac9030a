#!/usr/bin/env bash
# What a call to the lent GPU machine sends: the working tree (tracked files that are present, untracked files git
# does not ignore) and the carried folders, 64 MiB together. The zoo's weights (generators, teacher, classifier:
# about 58 MB) make the tree alone larger than that, so a call leaves behind the weights it does not read:
#
#   bench/device_tree.sh leave [PATH...]   delete these tracked, unmodified files from the working tree (no PATH:
#                                          every weights file under models/zoo)
#   bench/device_tree.sh restore           put back what `leave` deleted (git checkout; nothing else)
#   bench/device_tree.sh size [CARRY...]   the megabytes that would travel, with these carried paths
#
# Leave, call, restore: the call reads the tree when it starts, so restore only after it has returned.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
LIMIT=$((64 * 1024 * 1024))
LEFT=$(git rev-parse --git-path sida-device-tree-left)      # what `leave` deleted, for `restore` (inside .git)

travelling_bytes() {   # CARRY...: tracked files present, untracked-not-ignored files, and the carried paths
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null \
        | awk '{ s += $1 } END { print s + 0 }'
    [ $# -gt 0 ] && du -sb "$@" | awk '{ s += $1 } END { print s + 0 }' || echo 0
}

case ${1:-} in
leave)
    shift
    [ $# -gt 0 ] || set -- $(git ls-files 'models/zoo/*.safetensors' 'models/zoo/*.pt')
    for path in "$@"; do
        git ls-files --error-unmatch -- "$path" > /dev/null 2>&1 || { echo "$path: not a tracked file" >&2; exit 1; }
        [ -e "$path" ] || { echo "$path: already left behind" >&2; exit 1; }
        git diff --quiet -- "$path" || { echo "$path: has uncommitted changes; commit them first" >&2; exit 1; }
    done
    printf '%s\0' "$@" >> "$LEFT"
    rm -f -- "$@"
    echo "left behind: $*"
    ;;
restore)
    if [ -s "$LEFT" ]; then
        xargs -0 git checkout -- < "$LEFT" && tr '\0' ' ' < "$LEFT" | sed 's/^/restored: /' && echo && rm -f "$LEFT"
    else
        echo "restored: nothing (nothing was left behind)"
    fi
    ;;
size)
    shift
    total=$(travelling_bytes "$@" | awk '{ s += $1 } END { print s }')
    awk -v t="$total" -v l=$LIMIT 'BEGIN { printf "%.1f MB would travel (limit %.1f MB)%s\n", t / 1e6, l / 1e6,
        (t > l) ? ": too large" : "" }'
    [ "$total" -le $LIMIT ]
    ;;
*)
    sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
