"""Collection: broker messages to the fleet database (MQTT 5 and AMQP transports, storage, export, fleet views)."""
