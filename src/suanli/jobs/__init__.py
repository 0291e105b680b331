"""Job specifications: what a user submits, validated before anything is stored."""

from suanli.jobs.spec import JobSpec, JobSpecError, load_job_spec, parse_job_spec

__all__ = ["JobSpec", "JobSpecError", "load_job_spec", "parse_job_spec"]
