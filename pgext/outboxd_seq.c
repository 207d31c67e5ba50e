/* The PostgreSQL extension `outboxd`: the per-run seq trigger written in C, an optional
 * replacement for migration 2's PL/pgSQL one. It keeps the same promise (an INSERT gets
 * the run's next seq, gapless; writers of a run are serialized until commit; the id is
 * drawn after that) without running an SQL statement per event, which is what made
 * the PL/pgSQL trigger cost a third of a producer's inserts (docs/BENCHMARKS.md).
 *
 * How: the writers of a run are serialized by a transaction-level lock on a hash of
 * the table and the run (a lock-manager entry, as pg_advisory_xact_lock takes, in a
 * lock space of its own; lock_run says how many one transaction may hold); holding
 * it, the run's last seq is the newest row of the run that the (run_id, seq) unique
 * index leads to and that is visible to SnapshotSelf (committed,
 * or this transaction's own, this command's included). Every earlier writer of the
 * run has ended by then, so nothing newer can exist. A run with no rows left (the
 * relay's retention deleted them) goes on from its floor in the counter table, which
 * retention writes in the same transaction as the delete. No write besides the row.
 *
 * Written by hand: no library does this; it uses only PostgreSQL's own index, heap and
 * lock APIs, among them nbtree's search functions (last_of_run), whose signatures
 * change between major versions: it is written for PostgreSQL 15, and refuses to
 * build for another. `outboxd migrate` installs it (docs/SCHEMA.md, "The seq
 * trigger") with these trigger arguments, all checked at every call:
 *   0 the unique btree index (run key text, seq bigint) of the table
 *   1 the unique btree index (run key text) of the counter table
 *   2 the counter table's column holding a run's floor (bigint)
 *   3 the sequence the id is drawn from
 *   4 the channel to notify when a relay waits
 *   5, 6 the advisory lock (two int4 keys) a waiting relay holds
 * Names are looked up in the schema of the table the trigger is on. */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_type_d.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "storage/bufmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "the outboxd extension is written for PostgreSQL 15 (nbtree's search functions differ in other major versions)"
#endif

PG_MODULE_MAGIC;

/* The run locks' lock space: advisory locks taken from SQL use 1 (one bigint key) and
 * 2 (two int4 keys) here, so no application lock can meet ours. */
#define RUN_LOCK_SPACE 0x6f62

#define NARGS 7

static Oid relation_in(const char *name, Oid nsp, char kind)
{
    Oid oid = get_relname_relid(name, nsp);
    if (!OidIsValid(oid) || get_rel_relkind(oid) != kind)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("outboxd trigger: no %s \"%s\" in schema \"%s\"",
                               kind == RELKIND_INDEX ? "index" : "sequence", name, get_namespace_name(nsp)),
                        errhint("Run \"outboxd migrate\" to install the trigger again.")));
    return oid;
}

static int32 int_arg(const char *text)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < INT_MIN || v > INT_MAX)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("outboxd trigger: \"%s\" is not an int4 lock key", text)));
    return (int32) v;
}

/* Checks that idx is a plain unique btree on heap with nkeys key columns, the first a
 * text column of a deterministic collation (equal runs are then equal bytes, which
 * the run lock hashes) and the second, when there is one, a bigint; both ascending (a
 * run's newest entry is its last). */
static void check_index(Relation idx, Relation heap, int nkeys)
{
    Form_pg_index ix = idx->rd_index;
    TupleDesc desc = RelationGetDescr(heap);
    /* Valid, ready, live and immediate: an index being built or dropped may miss rows
     * or not enforce uniqueness yet. */
    bool ok = ix->indrelid == RelationGetRelid(heap) && ix->indisunique && ix->indisvalid && ix->indisready &&
              ix->indislive && ix->indimmediate && idx->rd_rel->relam == BTREE_AM_OID && ix->indnkeyatts == nkeys &&
              RelationGetIndexPredicate(idx) == NIL;
    for (int i = 0; ok && i < nkeys; i++) {
        AttrNumber a = ix->indkey.values[i];
        ok = a > 0 && a <= desc->natts && TupleDescAttr(desc, a - 1)->atttypid == (i == 0 ? TEXTOID : INT8OID) &&
             idx->rd_indoption[i] == 0;
    }
    ok = ok && get_collation_isdeterministic(idx->rd_indcollation[0]);
    if (!ok)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("outboxd trigger: \"%s\" is not a unique btree index on %s of the form the trigger needs",
                               RelationGetRelationName(idx), RelationGetRelationName(heap)),
                        errhint("Run \"outboxd migrate\" to install the trigger again.")));
}

/* newest()'s answer for the run index, most times at a fraction of its cost: an index
 * scan reads every entry of the run on the leaf page it lands on (a page holds hundreds,
 * and that was most of the trigger's time), where the run's last entry is enough. This
 * descends to the first entry past the run, as a backward scan does, and looks at the
 * entry before it on that leaf: an earlier run's means the run has no entries (0); the
 * run's own, when its row is visible to SnapshotSelf, is the newest row (1: no entry of
 * the run sorts after it, and every earlier writer of the run has ended). Anything else
 * (the entry on the page to the left, a posting list, a killed entry, a row not visible
 * such as an aborted writer's, a NULL seq, a table that is not a heap) is -1: ask
 * newest(). */
static int last_of_run(Relation idx, Relation heap, AttrNumber attno, Datum run, int64 *out)
{
    if (heap->rd_rel->relam != HEAP_TABLE_AM_OID)
        return -1;
    BTScanInsertData key;
    _bt_metaversion(idx, &key.heapkeyspace, &key.allequalimage);
    key.anynullkeys = false;
    key.nextkey = true; /* the first entry greater than the run, not equal to it */
    key.pivotsearch = false;
    key.scantid = NULL;
    key.keysz = 1;
    ScanKeyEntryInitializeWithInfo(&key.scankeys[0], 0, 1, InvalidStrategy, InvalidOid, idx->rd_indcollation[0],
                                   index_getprocinfo(idx, 1, BTORDER_PROC), run);
    Buffer buf;
    _bt_freestack(_bt_search(idx, &key, &buf, BT_READ, SnapshotSelf));
    if (!BufferIsValid(buf))
        return 0; /* the index is empty */
    Page page = BufferGetPage(buf);
    BTPageOpaque op = BTPageGetOpaque(page);
    OffsetNumber first = P_FIRSTDATAKEY(op), lo = first, hi = PageGetMaxOffsetNumber(page) + 1;
    while (lo < hi) { /* the first entry on the page that sorts after the run */
        OffsetNumber mid = lo + (hi - lo) / 2;
        if (_bt_compare(idx, &key, page, mid) >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int found = -1;
    ItemPointerData tid;
    if (lo > first) {
        ItemId iid = PageGetItemId(page, lo - 1);
        IndexTuple itup = (IndexTuple) PageGetItem(page, iid);
        if (_bt_compare(idx, &key, page, lo - 1) != 0)
            found = 0;
        else if (!ItemIdIsDead(iid) && !BTreeTupleIsPosting(itup)) {
            tid = itup->t_tid;
            found = 1;
        }
    } else if (P_LEFTMOST(op))
        found = 0;
    /* Unlocked but still pinned until the row is read: vacuum cannot remove the entry
     * and give its row's place to another meanwhile (nbtree/README, "the interlock"). */
    _bt_unlockbuf(idx, buf);
    if (found == 1) {
        found = -1;
        Buffer hbuf = ReadBuffer(heap, ItemPointerGetBlockNumber(&tid));
        LockBuffer(hbuf, BUFFER_LOCK_SHARE);
        HeapTupleData row;
        bool all_dead, isnull;
        if (heap_hot_search_buffer(&tid, heap, hbuf, SnapshotSelf, &row, &all_dead, true)) {
            Datum v = heap_getattr(&row, attno, RelationGetDescr(heap), &isnull);
            if (!isnull) {
                *out = DatumGetInt64(v);
                found = 1;
            }
        }
        UnlockReleaseBuffer(hbuf);
    }
    ReleaseBuffer(buf);
    return found;
}

/* Column attno of the newest row that index idx of heap leads to for key `run` and that
 * SnapshotSelf sees; false when there is none. */
static bool newest(Relation idx, Relation heap, AttrNumber attno, Datum run, int64 *out)
{
    ScanKeyData key;
    ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid, idx->rd_indcollation[0], F_TEXTEQ, run);
    IndexScanDesc scan = index_beginscan(heap, idx, SnapshotSelf, 1, 0);
    index_rescan(scan, &key, 1, NULL, 0);
    TupleTableSlot *slot = table_slot_create(heap, NULL);
    bool found = index_getnext_slot(scan, BackwardScanDirection, slot);
    if (found) {
        bool isnull;
        Datum v = slot_getattr(slot, attno, &isnull);
        found = !isnull;
        if (found)
            *out = DatumGetInt64(v);
    }
    index_endscan(scan);
    ExecDropSingleTupleTableSlot(slot);
    return found;
}

/* The floor of a run with no rows: column `col` of its row in the counter table, found
 * through the unique index `index_name` in schema nsp; false when the run has none.
 * Only a run's first event (or its first after retention emptied it) comes here. */
static bool counter_floor(const char *index_name, Oid nsp, Oid owner, const char *col, Datum run, int64 *out)
{
    Oid idxoid = relation_in(index_name, nsp, RELKIND_INDEX);
    /* The table before its index, as PostgreSQL locks them; both locks held until the
     * transaction ends. */
    Relation heap = table_open(IndexGetRelation(idxoid, false), AccessShareLock);
    Relation idx = index_open(idxoid, AccessShareLock);
    check_index(idx, heap, 1);
    /* The trigger reads the counter without the inserting role's privileges: it must
     * be a table of the outbox's owner, not one a trigger's creator points it at. */
    if (owner != heap->rd_rel->relowner)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("outboxd trigger: %s does not belong to the owner of the table the trigger is on",
                               RelationGetRelationName(heap))));
    AttrNumber attno = attnameAttNum(heap, col, false);
    if (attno <= 0 || TupleDescAttr(RelationGetDescr(heap), attno - 1)->atttypid != INT8OID)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("outboxd trigger: %s has no bigint column \"%s\"", RelationGetRelationName(heap), col)));
    bool found = newest(idx, heap, attno, run, out);
    index_close(idx, NoLock);
    table_close(heap, NoLock);
    return found;
}

/* Each run's lock is an entry in the server's shared lock table, which holds about
 * max_locks_per_transaction x (max_connections + max_prepared_transactions) locks of
 * every database together: a transaction writing thousands of runs would fill it and
 * make other sessions fail too. So a transaction may lock this many runs; the next
 * run it writes is refused with a clear error, before any lock is taken. (Taking one
 * table lock instead was tried: upgrading to it while holding run locks deadlocks
 * with the producers waiting for those runs, and it stops the relay's retention.) */
#define MAX_RUNS (max_locks_per_xact * 8)

static LocalTransactionId counted_lxid = InvalidLocalTransactionId;
static int run_locks; /* run locks this transaction took (those of aborted subtransactions too) */

static void lock_run(const LOCKTAG *run)
{
    if (MyProc->lxid != counted_lxid) {
        counted_lxid = MyProc->lxid;
        run_locks = 0;
    }
    if (run_locks >= MAX_RUNS && !LockHeldByMe(run, ExclusiveLock))
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                        errmsg("outboxd trigger: this transaction writes events of more than %d runs", MAX_RUNS),
                        errdetail("With the C seq trigger each run written holds a lock until commit, in a lock "
                                  "table all sessions share (max_locks_per_transaction x 8 runs per transaction)."),
                        errhint("Write fewer runs per transaction, raise max_locks_per_transaction, or use "
                                "\"outboxd migrate --seq-trigger plpgsql\" for bulk loads.")));
    if (LockAcquire(run, ExclusiveLock, false, false) == LOCKACQUIRE_OK)
        run_locks++;
}

PG_FUNCTION_INFO_V1(outboxd_assign_seq_c);

Datum outboxd_assign_seq_c(PG_FUNCTION_ARGS)
{
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("outboxd trigger: outboxd_assign_seq_c() is a trigger function")));
    TriggerData *td = (TriggerData *) fcinfo->context;
    if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
        !TRIGGER_FIRED_BY_INSERT(td->tg_event) || td->tg_trigger->tgnargs != NARGS)
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("outboxd trigger: outboxd_assign_seq_c() runs BEFORE INSERT FOR EACH ROW, "
                               "with %d arguments", NARGS),
                        errhint("Run \"outboxd migrate\" to install the trigger again.")));
    Relation rel = td->tg_relation;
    TupleDesc desc = RelationGetDescr(rel);
    char **args = td->tg_trigger->tgargs;
    Oid nsp = RelationGetNamespace(rel);
    Oid run_index = relation_in(args[0], nsp, RELKIND_INDEX);
    Oid id_seq = relation_in(args[3], nsp, RELKIND_SEQUENCE);
    int32 lock_class = int_arg(args[5]), lock_sleep = int_arg(args[6]);
    AttrNumber id_col = attnameAttNum(rel, "id", false);
    if (id_col <= 0 || TupleDescAttr(desc, id_col - 1)->atttypid != INT8OID)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("outboxd trigger: %s has no bigint column \"id\"", RelationGetRelationName(rel))));

    /* The run, by the index's first key column; the seq, its second. The lock is held
     * until the transaction ends. */
    Relation idx = index_open(run_index, AccessShareLock);
    check_index(idx, rel, 2);
    AttrNumber run_col = idx->rd_index->indkey.values[0], seq_col = idx->rd_index->indkey.values[1];
    bool isnull;
    Datum run = heap_getattr(td->tg_trigtuple, run_col, desc, &isnull);
    if (isnull)
        ereport(ERROR, (errcode(ERRCODE_NOT_NULL_VIOLATION),
                        errmsg("null value in column \"%s\" of relation \"%s\"", NameStr(TupleDescAttr(desc, run_col - 1)->attname),
                               RelationGetRelationName(rel))));

    /* The wake-up, as in the PL/pgSQL trigger: a relay waiting holds the lock. */
    LOCKTAG tag;
    SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) lock_class, (uint32) lock_sleep, 2);
    if (LockAcquire(&tag, ShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
        Async_Notify(args[4], "");

    /* The run's lock, held until the transaction (or the subtransaction) ends. The
     * table is in the hash: a trigger on another table never takes this one's locks. */
    text *t = DatumGetTextPP(run);
    uint64 h = DatumGetUInt64(
        hash_any_extended((const unsigned char *) VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), RelationGetRelid(rel)));
    SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, RUN_LOCK_SPACE);
    lock_run(&tag);

    /* The run as a plain value from here on: compressed or stored apart (a row from
     * INSERT ... SELECT), it would be expanded by every comparison in the index,
     * some while a page is locked. */
    run = PointerGetDatum(t);
    int64 last = 0;
    int found = last_of_run(idx, rel, seq_col, run, &last);
    if (found < 0)
        found = newest(idx, rel, seq_col, run, &last);
    if (!found && !counter_floor(args[1], nsp, rel->rd_rel->relowner, args[2], run, &last))
        last = 0;
    index_close(idx, NoLock);
    if (last == PG_INT64_MAX)
        ereport(ERROR, (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE), errmsg("outboxd trigger: the run's seq is at its maximum")));

    /* The relay tells a gap in the ids that may still fill from one that will not by
     * the transaction ids of the writers (docs/SCHEMA.md, "How the relay finds new
     * events"): this one must have its id before it draws the event's. (The counter's
     * update gave it one in the PL/pgSQL trigger; nextval gives one only now and then.) */
    (void) GetTopTransactionId();
    int cols[2] = {seq_col, id_col};
    Datum vals[2] = {Int64GetDatum(last + 1), Int64GetDatum(nextval_internal(id_seq, true))};
    bool nulls[2] = {false, false};
    return PointerGetDatum(heap_modify_tuple_by_cols(td->tg_trigtuple, desc, 2, cols, vals, nulls));
}
