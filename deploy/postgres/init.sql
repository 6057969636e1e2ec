-- The three target databases from the migration plan; config.example.toml maps the
-- Synapse SQLite sources onto them.
CREATE DATABASE synapse_core;
CREATE DATABASE synapse_business;
CREATE DATABASE synapse_analytics;
