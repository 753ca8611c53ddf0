"""Pipeline stages: plain functions from Parquet paths to Parquet paths. No Prefect here."""
