"""Interventions during generation: adding or clamping features (`intervene`) and the
strength rules shared by the CLI and the dashboard (`defaults`)."""
