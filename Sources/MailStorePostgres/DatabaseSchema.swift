/// The tables pop3d keeps in PostgreSQL, as numbered migrations. `pop3d db migrate` applies the missing ones in one
/// transaction; `pop3d serve` refuses to start on an older schema (and on a newer one, written by a newer pop3d).
///
/// - `accounts`: one row per user; `password` is a stored field as in the passwd-file (`{SCHEME}…`), `!` for an
///   account that cannot log in with a password (created for a passwd-file user, or locked).
/// - `messages`: one row per message: the POP3 size (CRLF counted) and the stored octets, the UIDL (NULL: derived
///   from the row id, `pg` and 16 hex digits; an imported message keeps its old server's), arrival and first
///   retrieval time, how many chunks hold its body.
/// - `message_chunks`: the body in chunks of `chunkSize` octets (the last may be shorter), stored uncompressed
///   (`STORAGE EXTERNAL`: a RETR reads without decompressing).
/// - `auth_penalty`, `pop3d_secrets` (version 2): the authentication penalty all nodes share, and its digest key.
/// - `accounts.last_login` (version 3): LOGIN-DELAY across nodes.
/// - `pop3d_listing(account, max)` (version 4): the login's listing in one statement.
public enum DatabaseSchema {
    /// Octets per stored chunk: memory per message in delivery and RETR is bounded by it.
    public static let chunkSize = 256 * 1024

    /// Migrations in order; the schema version is the count applied.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE accounts (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
                password text NOT NULL,
                quota_bytes bigint CHECK (quota_bytes >= 0),
                quota_messages bigint CHECK (quota_messages >= 0),
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE messages (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                uidl text CHECK (uidl IS NULL OR (length(uidl) BETWEEN 1 AND 70 AND uidl ~ '^[!-~]+$')),
                size bigint NOT NULL CHECK (size >= 0),
                octets bigint NOT NULL CHECK (octets >= 0),
                chunks integer NOT NULL CHECK (chunks >= 0),
                arrived_at timestamptz NOT NULL DEFAULT now(),
                first_retrieved_at timestamptz
            )
            """,
            "CREATE INDEX messages_by_account ON messages (account_id, id)",
            "CREATE UNIQUE INDEX messages_uidl ON messages (account_id, (coalesce(uidl, 'pg' || lpad(to_hex(id), 16, '0'))))",
            """
            CREATE TABLE message_chunks (
                message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
                seq integer NOT NULL CHECK (seq >= 0),
                data bytea NOT NULL,
                PRIMARY KEY (message_id, seq)
            )
            """,
            "ALTER TABLE message_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
        ],
        [
            // The auth penalty shared by every node (SharedPenalty): one row per client address key.
            """
            CREATE TABLE auth_penalty (
                address text PRIMARY KEY,
                failures integer NOT NULL,
                last_failure timestamptz NOT NULL,
                next_slot timestamptz NOT NULL,
                credentials text[] NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX auth_penalty_by_age ON auth_penalty (last_failure)",
            // Keys every node must share: the one that digests wrong credentials for the penalty.
            "CREATE TABLE pop3d_secrets (name text PRIMARY KEY, value bytea NOT NULL)",
        ],
        [
            // LOGIN-DELAY shared by every node (SharedLoginTimes).
            "ALTER TABLE accounts ADD COLUMN last_login timestamptz",
        ],
        [
            // The listing at login in one statement (one round trip instead of four). The account row is taken
            // FOR SHARE first, so the listing waits for a commit of the account in flight on another node (which
            // holds it FOR NO KEY UPDATE); a VOLATILE function takes a new snapshot for its next statement, so the
            // listing shows what that commit left. No row: the account is gone (SQLSTATE P0002).
            """
            CREATE FUNCTION pop3d_listing(account bigint, max_messages integer)
            RETURNS TABLE (m_id bigint, m_uidl text, m_size bigint, m_chunks integer)
            LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                PERFORM 1 FROM accounts a WHERE a.id = account FOR SHARE;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no such account' USING ERRCODE = 'no_data_found';
                END IF;
                RETURN QUERY
                    SELECT m.id, coalesce(m.uidl, 'pg' || lpad(to_hex(m.id), 16, '0')), m.size, m.chunks FROM messages m
                    WHERE m.account_id = account ORDER BY m.id LIMIT max_messages;
            END
            $$
            """,
        ],
    ]

    public static var version: Int { Self.migrations.count }

    /// The UIDL expression of a `messages` row (the unique index uses the same).
    static let uidlExpression = "coalesce(uidl, 'pg' || lpad(to_hex(id), 16, '0'))"

    /// The advisory-lock class of maildrop locks (`pg_try_advisory_lock(class, account id)`): "POP3" in ASCII, so
    /// that other applications' advisory locks in the same database do not collide with ours.
    static let lockClass: Int32 = 0x504F_5033

    /// The advisory-lock class that serialises deliveries to one account for its quota ("QUOT").
    static let quotaLockClass: Int32 = 0x5155_4F54
}
