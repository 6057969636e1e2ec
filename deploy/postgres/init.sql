-- The three target databases from the migration plan; config.example.toml maps the
-- 11 SQLite sources onto them.
CREATE DATABASE core;
CREATE DATABASE business;
CREATE DATABASE analytics;
