-- bench/pgbench-insert.sql with runs of each connection's own: :runs runs in all,
-- :runs / :conns of them per connection (bench/lib.sh's insert_rate passes both), so
-- that every event of a run comes from one backend, as from a worker that holds its
-- connection for the whole run. bench/huge_pages.sh runs it with HUGE_OWN_RUNS=1, and
-- part 1 of `make bench` for a workload CONNS:RUNS:own.
\set run random(1, :runs / :conns)
INSERT INTO run_outbox (run_id, payload) VALUES ('run-' || :client_id || '-' || :run, '{"step": 12345, "status": "running", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}');
