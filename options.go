package tbgateway

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

// Option configures a Gateway at Dial.
type Option func(*options) error

// Defaults of the options below.
const (
	DefaultKeepAlive         = 30 * time.Second
	DefaultConnectTimeout    = 10 * time.Second
	DefaultRequestTimeout    = 30 * time.Second
	DefaultMaxPayloadSize    = 65536
	DefaultHandlerQueue      = 256
	DefaultHandlerQueueBytes = 16 << 20
	DefaultRPCWorkers        = 4
	DefaultMaxReconnectDelay = 30 * time.Second
	DefaultQueueMessages     = 10_000
	DefaultQueueBytes        = 64 << 20
	DefaultMaxInflight       = 100
	DefaultPoisonThreshold   = 3
)

// OverflowPolicy decides what a publish does when the outbound queue is
// full.
type OverflowPolicy int

const (
	// OverflowBlock waits for room until the call's context ends (the default).
	OverflowBlock OverflowPolicy = iota
	// OverflowFailFast returns ErrQueueFull at once.
	OverflowFailFast
	// OverflowDropOldest evicts the oldest queued data, whose callers get
	// ErrDropped; evictions are counted in Stats.Dropped. Data the sender
	// is already packing into a message is being sent and is not evicted;
	// when only that could make room, the call waits as with Block.
	OverflowDropOldest
)

// String returns the policy's name.
func (p OverflowPolicy) String() string {
	switch p {
	case OverflowBlock:
		return "block"
	case OverflowFailFast:
		return "fail-fast"
	case OverflowDropOldest:
		return "drop-oldest"
	}
	return "unknown"
}

type options struct {
	username, password, clientID string
	tlsConfig                    *tls.Config
	rootCAs                      *x509.CertPool
	certs                        []tls.Certificate
	keepAlive, connectTimeout    time.Duration
	requestTimeout               time.Duration
	maxReconnectDelay            time.Duration
	qos                          byte
	logger                       *slog.Logger
	maxPayloadSize               int
	handlerQueue, rpcWorkers     int
	handlerBytes                 int
	paho                         []func(*mqtt.ClientOptions)
	queueMsgs, queueBytes        int
	overflow                     outbox.Policy
	maxInflight                  int
	coalesce                     bool
	linger                       time.Duration
	store                        QueueStore
	maxAge                       time.Duration
	updates                      UpdateHandler
	installed                    []Package
	onConnection                 func(ConnectionEvent)
	poisonThreshold              int
	onDevice                     func(DeviceEvent)
	sessionRefresh               time.Duration
	statsEvery                   time.Duration
	sessionLimits                bool
	ownLimits, gatewayLimits     ratelimit.Limits
	rateMargin                   float64
	startOffline                 bool
}

func defaultOptions() options {
	return options{
		keepAlive:         DefaultKeepAlive,
		connectTimeout:    DefaultConnectTimeout,
		requestTimeout:    DefaultRequestTimeout,
		maxReconnectDelay: DefaultMaxReconnectDelay,
		qos:               1,
		logger:            slog.New(slog.DiscardHandler),
		maxPayloadSize:    DefaultMaxPayloadSize,
		handlerQueue:      DefaultHandlerQueue,
		handlerBytes:      DefaultHandlerQueueBytes,
		rpcWorkers:        DefaultRPCWorkers,
		queueMsgs:         DefaultQueueMessages,
		queueBytes:        DefaultQueueBytes,
		maxInflight:       DefaultMaxInflight,
		coalesce:          true,
		poisonThreshold:   DefaultPoisonThreshold,
		sessionLimits:     true,
		rateMargin:        ratelimit.DefaultMargin,
	}
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, a...)...)
}

// WithAccessToken authenticates with a ThingsBoard access token, sent as the
// MQTT user name.
func WithAccessToken(token string) Option {
	return func(o *options) error {
		if token == "" {
			return invalid("empty access token")
		}
		o.username, o.password = token, ""
		return nil
	}
}

// WithBasicCredentials authenticates with ThingsBoard's MQTT basic
// credentials. Any of the three may be empty, as ThingsBoard allows; a
// non-empty clientID replaces the generated one.
func WithBasicCredentials(clientID, username, password string) Option {
	return func(o *options) error {
		if clientID == "" && username == "" {
			return invalid("basic credentials need a client id or a user name")
		}
		o.username, o.password = username, password
		if clientID != "" {
			o.clientID = clientID
		}
		return nil
	}
}

// WithClientCertificate authenticates with X.509: the certificate is
// presented in the TLS handshake (use an ssl:// or tls:// broker URL).
func WithClientCertificate(cert tls.Certificate) Option {
	return func(o *options) error {
		o.certs = append(o.certs, cert)
		return nil
	}
}

// WithTLSConfig sets the TLS configuration used for ssl://, tls://, mqtts://
// and wss:// brokers. Verification stays on unless the config itself turns
// it off. Certificates and CAs from WithClientCertificate and WithRootCAs are
// added to a clone of it.
func WithTLSConfig(c *tls.Config) Option {
	return func(o *options) error {
		if c == nil {
			return invalid("nil TLS config")
		}
		o.tlsConfig = c
		return nil
	}
}

// WithRootCAs trusts these certificate authorities instead of the system
// pool, for a ThingsBoard server with a private CA.
func WithRootCAs(pool *x509.CertPool) Option {
	return func(o *options) error {
		if pool == nil {
			return invalid("nil CA pool")
		}
		o.rootCAs = pool
		return nil
	}
}

// WithCAFile is WithRootCAs for a PEM file of CA certificates.
func WithCAFile(path string) Option {
	return func(o *options) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return invalid("CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return invalid("CA file %s holds no PEM certificate", path)
		}
		o.rootCAs = pool
		return nil
	}
}

// WithClientID sets the MQTT client id. By default every Gateway gets a
// unique random one, since two clients with one id evict each other.
func WithClientID(id string) Option {
	return func(o *options) error {
		o.clientID = id
		return nil
	}
}

// WithKeepAlive sets the MQTT keep-alive interval (default 30s). A
// connection on which nothing arrives for 1.5 × the keep-alive, such as a
// link that silently stopped forwarding, is cut and replaced.
func WithKeepAlive(d time.Duration) Option {
	return func(o *options) error {
		if d < time.Second {
			return invalid("keep-alive %v is under one second", d)
		}
		o.keepAlive = d
		return nil
	}
}

// WithConnectTimeout bounds each attempt to open the connection (default
// 10s). Dial's context bounds the whole call.
func WithConnectTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return invalid("connect timeout %v", d)
		}
		o.connectTimeout = d
		return nil
	}
}

// WithMaxReconnectDelay caps the back-off between reconnect attempts
// (default 30s). Attempts start 125–250 ms after a loss and double from
// there, each drawn at random in the upper half of its delay; the back-off
// starts over once a connection stayed up for 2 s.
func WithMaxReconnectDelay(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return invalid("max reconnect delay %v", d)
		}
		o.maxReconnectDelay = d
		return nil
	}
}

// WithRequestTimeout is how long attribute requests and Call wait for a
// reply when their context has no deadline (default 30s). ThingsBoard
// publishes no reply at all when a request fails on its side.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return invalid("request timeout %v", d)
		}
		o.requestTimeout = d
		return nil
	}
}

// WithQoS sets the QoS of every publish and subscription: 1 (the default,
// each publish waits for its PUBACK) or 0. ThingsBoard does not implement
// QoS 2, so 2 is refused.
func WithQoS(qos byte) Option {
	return func(o *options) error {
		if qos > 1 {
			return invalid("QoS %d: ThingsBoard supports QoS 0 and 1 only", qos)
		}
		o.qos = qos
		return nil
	}
}

// WithLogger sets the structured logger (default: discard). Access tokens
// and passwords are never logged; payloads only at debug level.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return invalid("nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithMaxPayloadSize is the server's transport.mqtt.netty.max_payload_size
// (default 65536). ThingsBoard counts it on the MQTT remaining length (topic,
// packet id and payload) and closes the connection when a message exceeds
// it, so larger messages are refused with ErrPayloadTooLarge before sending.
func WithMaxPayloadSize(n int) Option {
	return func(o *options) error {
		if n < 64 {
			return invalid("max payload size %d", n)
		}
		o.maxPayloadSize = n
		return nil
	}
}

// WithHandlerQueue bounds how many received messages may wait for each
// handler lane (attribute updates; RPC) before new ones are dropped and
// counted in Stats (default 256). rpcWorkers RPC handlers run at once
// (default 4); attribute-update handlers run one at a time, in order.
func WithHandlerQueue(size, rpcWorkers int) Option {
	return func(o *options) error {
		if size < 1 || rpcWorkers < 1 {
			return invalid("handler queue %d, rpc workers %d", size, rpcWorkers)
		}
		o.handlerQueue, o.rpcWorkers = size, rpcWorkers
		return nil
	}
}

// WithHandlerQueueBytes bounds the payload bytes of the received messages
// waiting in each handler lane (default 16 MiB), besides their count
// (WithHandlerQueue): a burst of large RPCs cannot take the heap with it.
// A message over the bound is taken when its lane is empty. What finds the
// lane full is dropped and counted in Stats.HandlerDropped; an RPC is
// answered with ErrHandlerQueueFull's text.
func WithHandlerQueueBytes(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return invalid("handler queue bytes %d", n)
		}
		o.handlerBytes = n
		return nil
	}
}

// WithPahoOptions adjusts the underlying paho client options after
// tbgateway has set its own; an escape hatch for settings it does not
// cover. Changing the handlers tbgateway installs breaks it.
func WithPahoOptions(f func(*mqtt.ClientOptions)) Option {
	return func(o *options) error {
		if f == nil {
			return invalid("nil paho options func")
		}
		o.paho = append(o.paho, f)
		return nil
	}
}

// WithQueue bounds the outbound queue, where data waits to be sent (while
// the connection is down, or faster than it can go): at most maxMessages
// records (one per device and call) and maxBytes encoded bytes; policy
// decides what happens when it is full. Defaults: 10 000 records, 64 MiB,
// Block. Under a sustained load the queue stays full, so its size is the
// latency every call pays (about 10 ms by default at 7 M points/s) and
// gains no throughput; raise it to ride out long outages without blocking
// callers, or use WithQueueStore.
func WithQueue(maxMessages, maxBytes int, policy OverflowPolicy) Option {
	return func(o *options) error {
		if maxMessages < 1 || maxBytes < 1 {
			return invalid("queue bounds %d messages, %d bytes", maxMessages, maxBytes)
		}
		switch policy {
		case OverflowBlock:
			o.overflow = outbox.Block
		case OverflowFailFast:
			o.overflow = outbox.FailFast
		case OverflowDropOldest:
			o.overflow = outbox.DropOldest
		default:
			return invalid("overflow policy %d", policy)
		}
		o.queueMsgs, o.queueBytes = maxMessages, maxBytes
		return nil
	}
}

// WithMaxAge drops queued data older than d instead of sending it: data
// that waited out a long outage and is no longer worth its place. The
// sender drops it when it reaches it (after an outage, as soon as the
// connection is back), fails its call with ErrExpired and counts it in
// Stats.Expired. Records restored from a QueueStore count their age from
// Dial; durable.WithMaxAge drops the ones written too long before. Off by
// default: nothing expires.
func WithMaxAge(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return invalid("max age %v", d)
		}
		o.maxAge = d
		return nil
	}
}

// WithMaxInflight bounds the messages sent and not yet acknowledged
// (default 100, ThingsBoard's default maxInflightMessages). It also bounds
// the duplicates a reconnect can cause.
func WithMaxInflight(n int) Option {
	return func(o *options) error {
		if n < 1 || n > 65535 {
			return invalid("max in-flight %d", n)
		}
		o.maxInflight = n
		return nil
	}
}

// WithCoalescing packs telemetry and attributes of several calls and
// devices into one message (up to the maximum payload size), waiting up to
// linger for more data before sending a message that is not full. It is on
// by default with no linger: whatever is queued together goes together.
func WithCoalescing(linger time.Duration) Option {
	return func(o *options) error {
		if linger < 0 {
			return invalid("linger %v", linger)
		}
		o.coalesce, o.linger = true, linger
		return nil
	}
}

// WithoutCoalescing sends every call's data in messages of its own.
func WithoutCoalescing() Option {
	return func(o *options) error {
		o.coalesce, o.linger = false, 0
		return nil
	}
}

// WithConnectionListener is told of every change of the connection's state
// (Up, Down, Reconnecting), in order, on a goroutine of the gateway.
func WithConnectionListener(f func(ConnectionEvent)) Option {
	return func(o *options) error {
		if f == nil {
			return invalid("nil connection listener")
		}
		o.onConnection = f
		return nil
	}
}

// WithPoisonThreshold sets after how many consecutive connection losses
// right after sending it a message is set aside as poison (default 3; 0
// turns detection off).
func WithPoisonThreshold(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return invalid("poison threshold %d", n)
		}
		o.poisonThreshold = n
		return nil
	}
}

// WithDeviceListener is told of ThingsBoard's notices about devices behind
// the gateway (renamed, deleted, session dropped), on a goroutine of the
// gateway. The gateway has already acted on them when it is called.
func WithDeviceListener(f func(DeviceEvent)) Option {
	return func(o *options) error {
		if f == nil {
			return invalid("nil device listener")
		}
		o.onDevice = f
		return nil
	}
}

// WithSessionRefresh announces a connected device again when it sent
// nothing for d. ThingsBoard drops a sub-device's session after 10 minutes
// without uplinks (transport.sessions.inactivity_timeout), after which the
// device gets no RPC or attribute updates; a refresh below that, such as 5
// minutes, keeps quiet devices reachable. Off by default.
func WithSessionRefresh(d time.Duration) Option {
	return func(o *options) error {
		if d < time.Second {
			return invalid("session refresh %v", d)
		}
		o.sessionRefresh = d
		return nil
	}
}

// WithRateLimits paces publishing under ThingsBoard's rate limits when the
// server does not report them: own applies to the gateway's own traffic,
// gateway to all traffic of the devices behind it together (one bucket).
// Each field is ThingsBoard's "capacity:seconds[,capacity:seconds...]"
// notation; "" is unlimited. Limits reported by getSessionLimits replace
// them. By default there are none until the server reports some.
func WithRateLimits(own, gateway RateLimits) Option {
	return func(o *options) error {
		var err error
		if o.ownLimits, err = own.parse(); err != nil {
			return invalid("rate limits: %v", err)
		}
		if o.gatewayLimits, err = gateway.parse(); err != nil {
			return invalid("gateway rate limits: %v", err)
		}
		return nil
	}
}

// WithRateLimitMargin sets the share of each rate-limit window the gateway
// uses (default 0.9), so that timer differences between client and server
// never cause a breach, which makes ThingsBoard close the connection.
func WithRateLimitMargin(m float64) Option {
	return func(o *options) error {
		if !(m > 0 && m <= 1) { // NaN too
			return invalid("rate limit margin %v", m)
		}
		o.rateMargin = m
		return nil
	}
}

// WithOfflineStart makes Dial return at once, before the first connection
// is made, instead of failing when the server cannot be reached: a gateway
// that boots before its network queues what it is given (in memory, or on
// disk with WithQueueStore) and keeps trying to connect with back-off.
// Connect calls are queued like data, and their devices are announced once
// connected. Connection failures, refused credentials included, are
// reported to WithConnectionListener and the log instead of returned. Off
// by default: Dial then fails if the first attempt does.
func WithOfflineStart() Option {
	return func(o *options) error {
		o.startOffline = true
		return nil
	}
}

// WithoutSessionLimits stops the gateway from asking getSessionLimits on
// every connect (and applying the answer).
func WithoutSessionLimits() Option {
	return func(o *options) error {
		o.sessionLimits = false
		return nil
	}
}

func (o *options) tls() *tls.Config {
	if o.tlsConfig == nil && o.rootCAs == nil && len(o.certs) == 0 {
		return nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.tlsConfig != nil {
		c = o.tlsConfig.Clone()
	}
	if o.rootCAs != nil {
		c.RootCAs = o.rootCAs
	}
	c.Certificates = append(c.Certificates, o.certs...)
	return c
}

func randomClientID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "tbgw-" + hex.EncodeToString(b[:])
}
