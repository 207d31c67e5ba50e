#!/usr/bin/env bash
# The Grafana dashboard (contrib/grafana/outboxd.json) is valid JSON that Grafana can
# import, and every metric its queries use is one that the running relay
# (--http-listen) or gateway serves on /metrics.
. "$(dirname "$0")/lib.sh"
new_db
dash="$ROOT/contrib/grafana/outboxd.json"

jq -e . "$dash" >/dev/null || fail "the dashboard is not valid JSON"
jq -e '.title and .uid and (.panels | length > 0) and (.schemaVersion | type == "number")' "$dash" >/dev/null ||
  fail "the dashboard lacks a title, uid, schemaVersion or panels"
dup=$(jq -r '[.panels[].id] | group_by(.) | map(select(length > 1) | .[0]) | .[]' "$dash")
[[ -z "$dup" ]] || fail "panel ids used twice: $dup"
# Every query panel has a query and reads the chosen data source.
bad=$(jq -r '.panels[] | select(.type != "row") | select((.targets | length) == 0 or any(.targets[]; (.expr // "") == "")
                                                       or .datasource.uid != "${datasource}") | .title' "$dash")
[[ -z "$bad" ]] || fail "panels without a query or the dashboard's data source: $bad"

jq -r '.panels[].targets[]?.expr, (.templating.list[].query | strings), (.templating.list[].query | objects | .query)' "$dash" |
  grep -oE '\boutboxd_[a-z0-9_]+' | sort -u >"$WORK/used"
[[ $(wc -l <"$WORK/used") -ge 10 ]] || fail "found only $(wc -l <"$WORK/used") metrics in the dashboard's queries"

# What the real binaries serve.
hport=$(pick_port)
start_relay relay --http-listen "127.0.0.1:$hport"
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$hport/metrics" && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$hport/metrics" >"$WORK/relay.metrics" || fail "relay /metrics did not answer"
start_sse sse
curl -sf "http://127.0.0.1:$SSE_PORT/metrics" >"$WORK/sse.metrics" || fail "gateway /metrics did not answer"
cat "$WORK/relay.metrics" "$WORK/sse.metrics" | grep -v '^#' | grep -oE '^[a-zA-Z_:][a-zA-Z0-9_:]*' | sort -u >"$WORK/served"
[[ -s "$WORK/served" ]] || fail "no samples in /metrics"

missing=$(comm -23 "$WORK/used" "$WORK/served")
[[ -z "$missing" ]] || fail "the dashboard uses metrics that /metrics does not serve: $(echo $missing)"
# Families served but not shown are worth knowing when a metric is added.
families=$(cat "$WORK/relay.metrics" "$WORK/sse.metrics" | awk '$1 == "#" && $2 == "TYPE" {print $3}' | sort -u)
unshown=$(for f in $families; do grep -q "^$f\(_bucket\|_sum\|_count\)\?$" "$WORK/used" || echo "$f"; done)
info "dashboard uses $(wc -l <"$WORK/used") metrics, all served${unshown:+; not on it: $(echo $unshown)}"
stop_relay "$RELAY_PID" 5
kill -TERM "$SSE_PID"
wait "$SSE_PID" || fail "the gateway exited $? after SIGTERM"
no_sanitizer_reports
