"""The operator's tools: verify, report, status, quarantine, rollback, doctor, check, plan,
init."""
