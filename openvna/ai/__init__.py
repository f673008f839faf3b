"""AI orchestration inside the archive: model manifests, rules, jobs, runners, results."""
