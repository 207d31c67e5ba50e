-- One producer insert, as an application writes it: a plain INSERT of one event of
-- one of :runs runs, autocommit, ~250-byte payload. bench/run.sh runs it with pgbench
-- against run_outbox of each schema and against a plain table with the same columns.
\set run random(1, :runs)
INSERT INTO run_outbox (run_id, payload) VALUES ('run-' || :run, '{"step": 12345, "status": "running", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}');
