"""The retrainer: learns online from every label, rebuilds on drift or schedule, publishes candidates."""
