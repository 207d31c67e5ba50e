\echo Use "CREATE EXTENSION outboxd" to load this file. \quit
CREATE FUNCTION outboxd_assign_seq_c() RETURNS trigger
  AS 'MODULE_PATHNAME', 'outboxd_assign_seq_c' LANGUAGE C;
