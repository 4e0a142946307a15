"""The improvement loop: feedback -> training data, the next round, the gate (through evaluate), promote / rollback
(the models file the server watches), A/B statistics. Runs training and evaluation as CLI processes; never imports
serve."""
