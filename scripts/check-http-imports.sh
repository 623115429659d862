#!/usr/bin/env bash
# Checks the layering of the control's HTTP edge (ARCHITECTURE.md, "Invariants"):
#  1. no handler module of src/control/http/ names another handler module
#     (only the shared pieces: error, extractor, views, cookies, limiter);
#  2. inside src/control/http/web/, no page module (account, mentions, moderation, ops, pages, rooms) names
#     another, and no page names a JSON handler module;
#  3. the control core names nothing in control::http.
# It reads every non-comment path that starts with `super::`, `super::super::` or
# `crate::control::http::`. Run from the repository root; exits 1 on a violation.
set -u
cd "$(dirname "$0")/.."
shared="error|extractor|views|cookies|limiter"
handlers="users sessions rooms chat read_marks nodes forward raft admin backup drain rebalance cluster web group_dms moderation messages"
fail=0
for f in src/control/http/*.rs src/control/http/web/*.rs; do
  name=${f#src/control/http/}; name=${name%.rs}
  case "$name" in mod|error|extractor|views|cookies|limiter) continue ;; esac
  used=$(grep -vE '^\s*//' "$f" | grep -oE '(super::super::|super::|crate::control::http::)[a-z_]+' \
    | sed -E 's/^(super::super::|crate::control::http::)/H:/; s/^super::/S:/' | sort -u)
  for u in $used; do
    m=${u#*:}
    # Inside web/, `super::x` is a sibling page piece; checked in step 2.
    [[ $f == src/control/http/web/* && $u == S:* ]] && continue
    [[ $m =~ ^($shared)$ ]] && continue
    for h in $handlers; do
      if [[ $m == "$h" ]]; then echo "$f names the handler module http::$m"; fail=1; fi
    done
  done
done
for f in src/control/http/web/{account,mentions,moderation,ops,pages,rooms}.rs; do
  if grep -vE '^\s*//' "$f" | grep -qE 'super::(account|mentions|moderation|ops|pages|rooms)\b'; then
    echo "$f names another page module"; fail=1
  fi
done
core="src/control/catalog.rs src/control/catalog src/control/raft src/control/mod.rs src/control/liveness.rs
      src/control/loads.rs src/control/routing.rs src/control/write.rs src/control/auth.rs src/control/secret.rs
      src/control/hashing.rs src/control/restore.rs src/control/read_marks.rs src/control/history.rs src/control/room_events.rs
      src/control/moderation.rs"
# control/mod.rs declares `pub mod http` and calls `http::serve`: the one allowed use.
if grep -rnE '(super::http|control::http|\bhttp::)' $core | grep -vE '^\S+:\s*//|reqwest|axum::http' \
    | grep -vE '^src/control/mod.rs:[0-9]+:(pub mod http;|\s*let server = http::serve\()'; then
  echo "the control core names control::http"; fail=1
fi
[[ $fail == 0 ]] && echo "ok: no handler module imports another; the core imports nothing from http/"
exit $fail
