-- Ownership of a job's progress is recorded with the job: a dispatcher claims due jobs by
-- setting a lease (a token unique to the claim, and its end), fences each of its writes by the
-- token, and releases the lease when its step ends. Cancel and delete requests that arrive
-- while a job is owned are recorded in `requested` and applied by the owner's next write.

ALTER TABLE jobs ADD COLUMN lease_token TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
ALTER TABLE jobs ADD COLUMN requested TEXT CHECK (requested IN ('cancel', 'delete'));

-- The earliest end of a lease, for the dispatcher's sleep (few rows: jobs being worked on).
CREATE INDEX jobs_lease_until ON jobs (lease_until) WHERE lease_until IS NOT NULL;
