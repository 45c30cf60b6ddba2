"""Pipelines across the tiers: ``config/pipelines.toml`` (:mod:`.config`), their prompts
(:mod:`.render`), the engine that sends each step as a job and moves on (:mod:`.engine`), and the tier
job's middleware that reports a finished step (:mod:`.middleware`). See docs/pipelines.md."""
