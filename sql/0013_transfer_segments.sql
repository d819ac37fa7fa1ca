-- Segmented SFTP downloads: a large file is read over this many connections to the server at once.

-- 1 is one stream, the default: some partners allow a single login at a time.
ALTER TABLE connections ADD COLUMN transfer_segments SMALLINT NOT NULL DEFAULT 1;
ALTER TABLE connections
    ADD CONSTRAINT ck_connections_transfer_segments CHECK (transfer_segments BETWEEN 1 AND 8);
