"""A canary for tests proving that nothing from a SQLite file runs in Postgres: a table
nobody may write (public.victim) and event triggers recording every DDL command and
dropped object, and every write to the canary, in public.audit."""

AUDIT_SQL = """
CREATE TABLE public.victim (id int PRIMARY KEY, v text);
INSERT INTO public.victim VALUES (1, 'one'), (2, 'two');
CREATE TABLE public.audit (id serial PRIMARY KEY, kind text, tag text, identity text, schema_name text,
                           temp boolean);
CREATE FUNCTION public.audit_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    INSERT INTO public.audit(kind, tag, identity, schema_name, temp)
    VALUES ('ddl', r.command_tag, r.object_identity, r.schema_name, r.in_extension);
  END LOOP;
END $f$;
CREATE FUNCTION public.audit_drop() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
    INSERT INTO public.audit(kind, tag, identity, schema_name, temp)
    VALUES ('drop', r.object_type, r.object_identity, r.schema_name, r.is_temporary);
  END LOOP;
END $f$;
CREATE FUNCTION public.audit_victim() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO public.audit(kind, tag, identity) VALUES ('dml', TG_OP, 'public.victim');
  RETURN NULL;
END $f$;
CREATE TRIGGER victim_writes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.victim
  FOR EACH STATEMENT EXECUTE FUNCTION public.audit_victim();
CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION public.audit_ddl();
CREATE EVENT TRIGGER audit_drop ON sql_drop EXECUTE FUNCTION public.audit_drop();
"""
