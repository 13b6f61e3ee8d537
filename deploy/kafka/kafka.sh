#!/usr/bin/env bash
# A local, single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1 for tests and
# benchmarks. The jars come from Maven Central through deploy/kafka/pom.xml and are cached.
#
#   deploy/kafka/kafka.sh install          resolve the jars into the cache (idempotent)
#   deploy/kafka/kafka.sh start [PORT]     format a fresh data dir, start, wait for the port
#   deploy/kafka/kafka.sh stop             stop the broker started by `start`, remove its data
#   deploy/kafka/kafka.sh halt             stop it but keep its data (a broker outage)
#   deploy/kafka/kafka.sh resume           start it again on its data and port
#   deploy/kafka/kafka.sh status           exit 0 if it is running
#   deploy/kafka/kafka.sh bootstrap        print host:port
#
# Environment: CHURNSIGNAL_KAFKA_CACHE (jar cache, default ~/.cache/churnsignal/kafka),
# CHURNSIGNAL_KAFKA_STATE (pid, port, data and log of the running broker; default
# ${TMPDIR:-/tmp}/churnsignal-kafka), CHURNSIGNAL_KAFKA_HEAP (default 1g),
# CHURNSIGNAL_KAFKA_AUTO_CREATE (auto.create.topics.enable; default false: tests create
# their topics with the partition counts they need), CHURNSIGNAL_KAFKA_OWNER_PID (stop
# the broker and remove its data when this process ends), CHURNSIGNAL_KAFKA_KEEP_LOGS (a
# directory: the broker's log is copied there before its data is removed, for CI to show).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${CHURNSIGNAL_KAFKA_CACHE:-$HOME/.cache/churnsignal/kafka}/$version"
state="${CHURNSIGNAL_KAFKA_STATE:-${TMPDIR:-/tmp}/churnsignal-kafka}"
heap="${CHURNSIGNAL_KAFKA_HEAP:-1g}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

install() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "maven (mvn) is required to resolve the broker's jars"
  command -v java >/dev/null || die "java (17+) is required to run the broker"
  mkdir -p "$cache"
  echo "kafka.sh: resolving Apache Kafka $version from Maven Central into $cache" >&2
  (cd "$here" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$cache/lib" >&2) || die "maven could not resolve the jars"
  cat > "$cache/log4j2.properties" <<'LOG'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
LOG
  touch "$cache/.complete"
}

running() {
  [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until this broker, not merely something, serves its port: the port must accept
# connections and the broker's own log must say, after `mark` (its line count before
# the launch), that it started. A port taken by another process in the moment between
# choosing it and the broker binding it would otherwise pass for the broker.
wait_started() {
  local port=$1 mark=$2 deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    running || return 2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
      && tail -n "+$((mark + 1))" "$state/logs/server.log" 2>/dev/null \
        | grep -q 'Kafka Server started'; then
      return 0
    fi
    sleep 0.3
  done
  return 1
}

log_tail() {
  tail -n 30 "$state/logs/server.log" "$state/stdout.log" >&2 2>/dev/null || true
}

cp="$cache/lib/*"
java_opts=(-Xms"$heap" -Xmx"$heap" -XX:+UseG1GC
  -Dlog4j2.configurationFile="$cache/log4j2.properties" -Dkafka.logs.dir="$state/logs")

start() {
  install
  if running; then echo "127.0.0.1:$(cat "$state/port")"; return 0; fi
  # Brokers started at the same moment (tests run in parallel) choose their ports one
  # at a time, so that none picks a port another has chosen but not yet bound.
  exec 9>"${TMPDIR:-/tmp}/churnsignal-kafka-start.lock"
  flock 9
  rm -rf "$state" && mkdir -p "$state"
  local attempt
  for attempt in 1 2 3; do
    local port="${1:-$(free_port)}" cport
    cport="$(free_port)"
    [ "$cport" != "$port" ] || cport="$(free_port)"
    configure "$port" "$cport"
    if launch; then
      flock -u 9
      echo "127.0.0.1:$port"
      return 0
    fi
    # Ports taken meanwhile by another process: the broker exits; try fresh ones
    # (a port given on the command line is not replaced).
    [ -z "${1:-}" ] || die "broker could not start on 127.0.0.1:$port (log: $state/logs/server.log)"
    echo "kafka.sh: broker did not start on ports $port/$cport (attempt $attempt of 3)" >&2
    stop_pid
  done
  die "broker could not start after 3 attempts (log: $state/logs/server.log)"
}

# Writes a fresh data dir and server.properties for a broker on `port` and a
# controller on `cport`.
configure() {
  local port=$1 cport=$2
  rm -rf "$state/data" "$state/logs" && mkdir -p "$state/data" "$state/logs"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
auto.create.topics.enable=${CHURNSIGNAL_KAFKA_AUTO_CREATE:-false}
PROPS
  local cluster_id
  cluster_id="$(java -cp "$cp" "${java_opts[@]}" kafka.tools.StorageTool random-uuid)"
  java -cp "$cp" "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$state/server.properties" > "$state/format.log" 2>&1 || { cat "$state/format.log" >&2; die "storage format failed"; }
  echo "$port" > "$state/port"
}

# Starts the broker on the formatted data dir and waits for its port. With
# CHURNSIGNAL_KAFKA_OWNER_PID set, a watchdog stops the broker (and removes its data)
# when that process ends, so a test run that started it never leaves it behind.
launch() {
  local mark=0
  [ -f "$state/logs/server.log" ] && mark=$(wc -l < "$state/logs/server.log")
  nohup java -cp "$cp" "${java_opts[@]}" kafka.Kafka "$state/server.properties" \
    >> "$state/stdout.log" 2>&1 9>&- &
  local pid=$!
  echo "$pid" > "$state/pid"
  local owner="${CHURNSIGNAL_KAFKA_OWNER_PID:-}"
  if [ -n "$owner" ] && [ ! -f "$state/watchdog" ]; then
    touch "$state/watchdog"
    local dir="$state"
    # When the owner ends: `stop` on this state dir (unless it is gone already).
    nohup setsid bash -c '
      owner=$1; dir=$2; script=$3
      while kill -0 "$owner" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
      [ -d "$dir" ] && CHURNSIGNAL_KAFKA_STATE="$dir" bash "$script" stop' \
      _ "$owner" "$dir" "$here/kafka.sh" >/dev/null 2>&1 < /dev/null 9>&- &
  fi
  local rc=0
  wait_started "$(cat "$state/port")" "$mark" || rc=$?
  case $rc in
    0) return 0 ;;
    2) log_tail; echo "kafka.sh: broker exited during start" >&2; return 1 ;;
    *) log_tail; echo "kafka.sh: broker did not start on 127.0.0.1:$(cat "$state/port") within 90 s" >&2; return 1 ;;
  esac
}

# Stops a broker process that failed to start (its watchdog, if any, stays: it
# watches the state dir, which the next attempt reuses).
stop_pid() {
  local pid
  pid="$(cat "$state/pid" 2>/dev/null)" || return 0
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$state/pid"
}

# Stops the running broker: SIGTERM (a clean shutdown), SIGKILL after 30 s.
terminate() {
  local pid deadline=$((SECONDS + 30))
  pid="$(cat "$state/pid")"
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

# Stops the broker but keeps its data, for `resume` (a broker restart).
halt() {
  running || die "no broker running in $state"
  terminate
  rm -f "$state/pid"
}

resume() {
  install
  [ -f "$state/server.properties" ] || die "nothing to resume in $state"
  running && die "the broker in $state is running"
  launch || die "broker could not resume on 127.0.0.1:$(cat "$state/port")"
  echo "127.0.0.1:$(cat "$state/port")"
}

stop() {
  if running; then terminate; fi
  if [ -n "${CHURNSIGNAL_KAFKA_KEEP_LOGS:-}" ] && [ -f "$state/logs/server.log" ]; then
    mkdir -p "$CHURNSIGNAL_KAFKA_KEEP_LOGS"
    cp "$state/logs/server.log" "$CHURNSIGNAL_KAFKA_KEEP_LOGS/$(basename "$state").server.log"
  fi
  rm -rf "$state"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  halt) halt ;;
  resume) resume ;;
  status) running ;;
  bootstrap) running && echo "127.0.0.1:$(cat "$state/port")" ;;
  *) die "usage: $0 install|start [PORT]|stop|halt|resume|status|bootstrap" ;;
esac
