-- A job's typed spec (method and hyperparameters as requested, JSON of
-- `domain::job_spec::JobSpec`), written once at creation, and the numbers its "auto"
-- values became (`ResolvedHyperparameters`), written by the worker. OpenAI's `method` /
-- `hyperparameters` echo is made from them at the wire. The old echo columns stay for rows
-- made before this migration (their spec is parsed from `method` when read); newer rows
-- hold JSON `null` there.
ALTER TABLE fine_tuning_jobs ADD COLUMN spec TEXT;
ALTER TABLE fine_tuning_jobs ADD COLUMN resolved TEXT;
