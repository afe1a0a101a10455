# Reads `sluice cluster status --json` (pretty-printed: one field a line, one object per
# replica) and prints "BROKER_NAME REPLICA_ID ROLE REACHABLE TERM ADDRESS" per replica, so the
# scripts need no jq. A master's nested "replicas" list (its view of every member's progress)
# is skipped: its objects carry replica_id and address too.
skip && /^[[:space:]]*\]/ { skip = 0; next }
skip { next }
/^[[:space:]]*"replicas": \[[[:space:]]*$/ { skip = 1; next }
/^[[:space:]]*"[a-z_]+": / {
  line = $0
  sub(/^[[:space:]]*"/, "", line)
  key = line; sub(/".*/, "", key)
  val = line; sub(/^[^"]*": /, "", val); sub(/,[[:space:]]*$/, "", val); gsub(/"/, "", val)
  f[key] = val
}
/^[[:space:]]*}/ {
  if ("broker_name" in f) print f["broker_name"], f["replica_id"], f["role"], f["reachable"], f["term"], f["address"]
  split("", f)
}
