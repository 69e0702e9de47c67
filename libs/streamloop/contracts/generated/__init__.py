"""Generated from schemas/proto by services/online_scorer/generate_proto.py; do not edit."""
