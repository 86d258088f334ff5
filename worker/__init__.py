"""chatstore's worker: consumes chat events from RabbitMQ into PostgreSQL."""
