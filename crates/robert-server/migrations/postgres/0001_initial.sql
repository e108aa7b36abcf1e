-- 1: initial schema of the PostgreSQL backend (crates/robert-server/src/storage/postgres.rs).
-- Applied once, in one transaction, under an advisory lock (replicas starting together). Never edit
-- a migration that shipped: add the next file.

-- The IDTable (§3.2). IDs are 40-bit integers; SRE_A an epoch. Every ESR rewrites sre (and maybe
-- notified), none of them indexed: a fillfactor below 100 leaves room in the page so those updates
-- stay HOT (no index write, no page split).
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    keys BYTEA NOT NULL,
    notified BOOLEAN NOT NULL DEFAULT FALSE,
    acknowledged BOOLEAN NOT NULL DEFAULT FALSE,
    sre INTEGER
) WITH (fillfactor = 80);

-- LEE_A, one row per (ID, exposed epoch). The foreign key makes "unregister erases LEE_A" hold even
-- against a mixer committing exposures for that ID at the same moment (the cascade, or the mixer's
-- foreign-key check, waits for the other). Expiry is a range delete on the epoch index; vacuum
-- runs after about 2 % of the rows died (the default, 20 %, would leave days of expired rows' index
-- entries for the next expiry scan to step over).
CREATE TABLE exposures (
    id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    hellos BIGINT NOT NULL,
    rssi_sum BIGINT NOT NULL,
    rssi_count BIGINT NOT NULL,
    PRIMARY KEY (id, epoch)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 10000);
CREATE INDEX exposures_by_epoch ON exposures (epoch);

-- Uploaded pairs awaiting the mixer (§6.1): a random slot, the record, nothing else. Rows come and
-- go fast: vacuum often so the space of erased pairs is reused soon.
CREATE TABLE pool (
    slot BYTEA PRIMARY KEY CHECK (length(slot) = 16),
    record BYTEA NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Single-use values (report and reset token jtis, registration challenges) until they expire.
CREATE TABLE used_tokens (
    jti TEXT PRIMARY KEY,
    expires BIGINT NOT NULL
);
CREATE INDEX used_tokens_by_expiry ON used_tokens (expires);

-- Each day's K_S, wrapped, until CT days after its day (§3.1 footnote 5).
CREATE TABLE server_keys (
    day INTEGER PRIMARY KEY,
    wrapped BYTEA NOT NULL
);

-- Pairs for another country's server (§8), until delivered.
CREATE TABLE outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cc SMALLINT NOT NULL,
    record BYTEA NOT NULL
);
