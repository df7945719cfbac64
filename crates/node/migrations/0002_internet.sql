-- Outbound network access of each sandbox; sandboxes created before this column had it.
ALTER TABLE sandboxes ADD COLUMN internet INTEGER NOT NULL DEFAULT 1;
