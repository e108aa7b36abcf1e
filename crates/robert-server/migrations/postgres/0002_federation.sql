-- 2: federation (§8). The outbox is read per country in insertion order; one pending (sealed, not
-- yet acknowledged) batch per peer country with its records in outbox order; each country's last
-- batch sequence number (never reused, even after its batch is done).
CREATE INDEX outbox_by_cc ON outbox (cc, seq);

CREATE TABLE fed_pending (
    cc SMALLINT PRIMARY KEY,
    batch_id BYTEA NOT NULL CHECK (length(batch_id) = 16),
    seq BIGINT NOT NULL,
    created BIGINT NOT NULL,
    records BYTEA[] NOT NULL
);

CREATE TABLE fed_sequence (
    cc SMALLINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
