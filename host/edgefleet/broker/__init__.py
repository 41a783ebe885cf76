"""The brokers the fleet talks through: mosquitto configuration and logins, a RabbitMQ cluster, the TLS PKI."""
