package tbtest

import (
	"log/slog"
	"time"
)

// DefaultToken is the access token of the gateway that NewServer registers
// when no WithGateway or WithNamedGateway option is given.
const DefaultToken = "tbtest-token"

// DefaultMaxPayloadSize is ThingsBoard's default transport.mqtt.netty.max_payload_size:
// the largest MQTT remaining length (variable header + payload) the server accepts.
const DefaultMaxPayloadSize = 65536

// DefaultMaxInflightMessages is ThingsBoard's default
// transport.mqtt.msg_queue_size_per_device_limit, reported by getSessionLimits.
const DefaultMaxInflightMessages = 100

// DefaultClaimDurationMs is ThingsBoard's security.claim.duration, the claim
// duration the server applies when a claim carries durationMs 0 or none.
const DefaultClaimDurationMs int64 = 86400000

// Option configures a Server created by NewServer.
type Option func(*config)

// RateLimits is one ThingsBoard rate-limit bucket as configured in a tenant
// profile. Each field is "capacity:seconds[,capacity:seconds...]" (all windows
// apply at once, tokens refill continuously) or "" for unlimited.
//
// Messages is consumed by every message that carries no data points (session
// open/close, subscriptions, device lookup/creation, attribute requests, RPC
// replies, claims). TelemetryMessages is consumed once by each telemetry or
// attribute message, TelemetryDataPoints by the number of key/value pairs in it.
type RateLimits struct {
	Messages            string
	TelemetryMessages   string
	TelemetryDataPoints string
}

// SessionLimits is what the server answers to the getSessionLimits RPC
// (WIRE §5.3). Empty RateLimits fields are reported as JSON null.
type SessionLimits struct {
	MaxPayloadSize      int
	MaxInflightMessages int
	// RateLimits applies to the gateway's own traffic (transportGatewayDevice*).
	RateLimits RateLimits
	// GatewayRateLimits is the one bucket shared by all sub-devices of the
	// gateway (transportGateway*).
	GatewayRateLimits RateLimits
}

type gatewaySpec struct {
	name    string
	token   string
	profile string // "" means "default"
}

type config struct {
	addr            string
	gateways        []gatewaySpec
	tls             bool
	maxPayload      int
	sessionLimits   *SessionLimits
	gwDeviceLimits  RateLimits
	gwLimits        RateLimits
	ackOnValidation bool
	maxDevices      int
	logger          *slog.Logger
	provision       []ProvisionProfile
	provisionClose  time.Duration
}

// WithGateway registers a gateway device (a ThingsBoard device with
// additionalInfo gateway=true) that authenticates with accessToken as its MQTT
// username, with any password and any client id (WIRE §10.3). Its device name is "Gateway <accessToken>"; use
// WithNamedGateway to choose the name. The option may be repeated to serve
// several gateways at once. Without any gateway option, NewServer registers
// one gateway with DefaultToken.
func WithGateway(accessToken string) Option {
	return WithNamedGateway("Gateway "+accessToken, accessToken)
}

// WithNamedGateway is WithGateway with an explicit device name for the
// gateway; telemetry and attributes the gateway publishes on v1/devices/me/*
// are stored under that name.
func WithNamedGateway(name, accessToken string) Option {
	return func(c *config) {
		c.gateways = append(c.gateways, gatewaySpec{name: name, token: accessToken})
	}
}

// WithTLS makes the server listen with TLS, using a freshly generated
// self-signed ECDSA certificate valid for 127.0.0.1, ::1 and localhost.
// URL then starts with "ssl://" and TLSConfig returns a client configuration
// that trusts the certificate.
func WithTLS() Option {
	return func(c *config) { c.tls = true }
}

// WithMaxPayloadSize sets the largest accepted MQTT remaining length
// (variable header + payload, so topic and packet id count), as ThingsBoard's
// transport.mqtt.netty.max_payload_size does. A larger packet closes the
// connection. The default is DefaultMaxPayloadSize; n <= 0 keeps the default.
func WithMaxPayloadSize(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxPayload = n
		}
	}
}

// WithSessionLimits sets exactly what getSessionLimits answers, whatever
// limits are enforced. Without it the answer reflects the enforced limits
// (WithMaxPayloadSize, WithRateLimits) and DefaultMaxInflightMessages.
func WithSessionLimits(l SessionLimits) Option {
	return func(c *config) { c.sessionLimits = &l }
}

// WithRateLimits enforces ThingsBoard's gateway rate limits (WIRE §5.2):
// gatewayDevice is the transportGatewayDevice* bucket (the gateway's own
// v1/devices/me/* session), gateway the transportGateway* bucket shared by all
// sub-device traffic of one gateway. Buckets are kept per gateway token and
// survive reconnects and Restart. As on ThingsBoard (WIRE §10.4), the
// gateway's own session open and close cost one message each of
// gatewayDevice (an open over the limit refuses the CONNECT: CONNACK 3, or
// 0x9F and DISCONNECT 0x96 on MQTT 5), and a sub-device new on a connection
// costs two messages of gateway (lookup and session open) before its data.
// A malformed limit string makes NewServer fail.
func WithRateLimits(gatewayDevice, gateway RateLimits) Option {
	return func(c *config) {
		c.gwDeviceLimits = gatewayDevice
		c.gwLimits = gateway
	}
}

// WithSendAckOnValidationError emulates a gateway device profile with
// sendAckOnValidationException=true: a QoS 1 publish whose payload is not
// parseable JSON gets a plain PUBACK and the session stays, instead of the
// default close without PUBACK (WIRE §2.2 first row).
func WithSendAckOnValidationError() Option {
	return func(c *config) { c.ackOnValidation = true }
}

// WithAddr makes NewServer listen on addr ("host:port") instead of a random
// loopback port, so that programs and clients configured in advance (the
// tbtest command, an external tool) can find it. Port 0 picks a free port;
// Addr reports the one chosen. The default is "127.0.0.1:0".
func WithAddr(addr string) Option {
	return func(c *config) { c.addr = addr }
}

// WithMaxDevices emulates a tenant profile's maxDevices: creating a
// sub-device beyond n sub-devices in the registry fails with "Maximum number
// of devices reached!", which an MQTT 5 gateway sees as PUBACK 0x97 and an
// MQTT 3.1.1 gateway as a plain PUBACK (WIRE §2.2, server test
// testAckIsReceivedOnFailedPublishMessage). n <= 0 (the default) means no
// limit.
func WithMaxDevices(n int) Option {
	return func(c *config) { c.maxDevices = max(n, 0) }
}

// WithLogger routes the server's event log to l, with the logs of the
// embedded mochi broker: at Info, gateway connections, every PUBLISH with
// its answer and what it stored, devices created, downlinks and refusals;
// at Debug, publish payloads too. By default everything is discarded.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}
