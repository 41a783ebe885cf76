# TLS helpers of the MQTT client (node/mqtt.py), in their own module so a node on plain mqtt:// never loads
# them (every resident function and string costs heap on a board).


def ca_der(path):
    # MicroPython's ssl takes the CA as DER; users have PEM files (what openssl and brokers hand out).
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----BEGIN"):
        import binascii

        lines = data.split(b"\n")
        body = b"".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith(b"-----"))
        data = binascii.a2b_base64(body)
    return data


def error_text(host, port, e):
    # mbedtls says what is wrong with a certificate in words ("The certificate validity has expired", "...not
    # correctly signed by the trusted CA", "...Common Name (CN) does not match"): keep them, one line. A reset
    # during the handshake is what a plain MQTT port does to a TLS client.
    why = (str(e) or repr(e)).strip().replace("\n", " ")
    if "certificate" in why or "CN" in why:
        return "TLS: the certificate of %s:%d is refused: %s (checked against broker.ca)" % (host, port, why)
    return "TLS handshake with %s:%d failed (%s): is this port a TLS listener? (plain MQTT is usually 1883, TLS 8883)" % (
        host,
        port,
        why,
    )
