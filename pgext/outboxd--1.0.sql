\echo Use "CREATE EXTENSION outboxd" to load this file. \quit
CREATE FUNCTION outboxd_assign_seq_c() RETURNS trigger
  AS 'MODULE_PATHNAME', 'outboxd_assign_seq_c' LANGUAGE C;
-- Only roles granted it may attach it to a table: a trigger on a table of one's own
-- could otherwise take the run locks of others' writers. Firing it needs no grant.
REVOKE ALL ON FUNCTION outboxd_assign_seq_c() FROM PUBLIC;
