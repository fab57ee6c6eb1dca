"""The forecast assets (when each instance and database reaches its limit), their calibration
check, their metadata and chart, and their automation."""
