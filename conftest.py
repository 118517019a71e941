"""Makes the project root importable for pytest (the packages are not installed on purpose:
`models`, `training` ... are generic names that must not land in site-packages)."""
