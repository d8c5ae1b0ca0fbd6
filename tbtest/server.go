package tbtest

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// ErrServerClosed is returned by Start after Close, and by waiting calls
// (RPC, GatewayRPC) interrupted by Close.
var ErrServerClosed = errors.New("tbtest: server closed")

// rebindRetry is how long Start and Restart wait for the port to be free.
const rebindRetry = 3 * time.Second

// errStopped is the stop cause given to connections cut by the server.
var errStopped = errors.New("tbtest: connection closed by server")

// Server is an in-process fake ThingsBoard MQTT transport for gateway tests.
// It must be created with NewServer; all methods are safe for concurrent use.
type Server struct {
	cfg           config
	log           *slog.Logger
	serverTLS     *tls.Config
	clientTLS     *tls.Config
	sessionLimits SessionLimits

	life   sync.Mutex // serializes Start, Stop, Restart and Close
	addr   string     // guarded by mu (read by URL/Addr)
	broker *mqtt.Server
	ln     *listener
	closed bool
	done   chan struct{}

	mu          sync.Mutex
	devices     map[string]*device
	gateways    map[string]*gateway // by access token
	conns       map[*mqtt.Client]*conn
	connSeq     uint64 // connections accepted
	messages    []Message
	sent        []Message
	rejections  []Rejection
	pendingRPC  map[rpcKey]chan json.RawMessage // sub-device RPCs by (device, id)
	pendingOwn  map[rpcKey]chan json.RawMessage // gateway RPCs by (gateway token, id)
	holdAcks    bool
	ackDelay    time.Duration
	refuseUntil time.Time
	changed     chan struct{}

	ctl controls // Control functions

	provProfiles map[string]*provisionProfile // by provisionDeviceKey
	provisioned  []ProvisionedDevice
}

// NewServer starts a fake ThingsBoard server on a random loopback port
// (127.0.0.1:0, or WithAddr) and returns it. If tb is not nil, a start failure fails the
// test and tb.Cleanup closes the server; with a nil tb a failure panics and
// the caller must call Close.
func NewServer(tb testing.TB, opts ...Option) *Server {
	if tb != nil {
		tb.Helper()
	}
	s, err := newServer(opts...)
	if err == nil {
		s.life.Lock()
		err = s.startLocked(s.cfg.addr, 0)
		s.life.Unlock()
	}
	if err != nil {
		if tb != nil {
			tb.Fatalf("tbtest: start server: %v", err)
			return nil
		}
		panic(fmt.Sprintf("tbtest: start server: %v", err))
	}
	if tb != nil {
		tb.Cleanup(s.Close)
	}
	return s
}

func newServer(opts ...Option) (*Server, error) {
	cfg := config{addr: "127.0.0.1:0", maxPayload: DefaultMaxPayloadSize}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if len(cfg.gateways) == 0 {
		WithGateway(DefaultToken)(&cfg)
	}
	profiles, err := cfg.setupProvisioning()
	if err != nil {
		return nil, err
	}
	if err := validateLimits(cfg.gwDeviceLimits); err != nil {
		return nil, err
	}
	if err := validateLimits(cfg.gwLimits); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.logger,
		done:       make(chan struct{}),
		devices:    map[string]*device{},
		gateways:   map[string]*gateway{},
		conns:      map[*mqtt.Client]*conn{},
		pendingRPC: map[rpcKey]chan json.RawMessage{},
		pendingOwn: map[rpcKey]chan json.RawMessage{},
		changed:    make(chan struct{}),

		provProfiles: profiles,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.sessionLimits != nil {
		s.sessionLimits = *cfg.sessionLimits
	} else {
		s.sessionLimits = SessionLimits{
			MaxPayloadSize:      cfg.maxPayload,
			MaxInflightMessages: DefaultMaxInflightMessages,
			RateLimits:          cfg.gwDeviceLimits,
			GatewayRateLimits:   cfg.gwLimits,
		}
	}
	if cfg.tls {
		var err error
		if s.serverTLS, s.clientTLS, err = newTLSPair(); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	for _, g := range cfg.gateways {
		if _, dup := s.gateways[g.token]; dup {
			continue
		}
		if _, dup := s.devices[g.name]; dup {
			return nil, fmt.Errorf("tbtest: two gateways named %q", g.name)
		}
		profile := g.profile
		if profile == "" {
			profile = "default"
		}
		d := newDevice(g.name, profile, now)
		s.devices[g.name] = d
		s.registerGatewayLocked(d, g.token, now)
	}
	for _, p := range profiles {
		for name := range p.pre {
			if _, ok := s.devices[name]; !ok {
				s.devices[name] = newDevice(name, p.Name, now)
			}
		}
	}
	return s, nil
}

// startLocked binds addr (retrying for up to retry while it is in use) and
// serves a fresh mochi broker on it.
func (s *Server) startLocked(addr string, retry time.Duration) error {
	ln, err := listenTCP(addr, retry)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.mu.Unlock()
	var inner net.Listener = ln
	if s.serverTLS != nil {
		inner = tls.NewListener(ln, s.serverTLS)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // QoS 2 publishes are treated as QoS 1 (PUBACK), SUBACK grants at most 1
	// Safety net only: the exact ThingsBoard limit is checked in OnPacketRead.
	caps.MaximumPacketSize = uint32(max(16<<20, s.cfg.maxPayload+16))
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	b := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 s.log,
		SysTopicResendInterval: 3600,
	})
	if err := b.AddHook(&hook{s: s}, nil); err != nil {
		_ = ln.Close()
		return err
	}
	l := newListener("tbtest", inner)
	if err := b.AddListener(l); err != nil {
		_ = ln.Close()
		return err
	}
	if err := b.Serve(); err != nil {
		_ = b.Close()
		return err
	}
	s.broker, s.ln = b, l
	return nil
}

// stopLocked forgets every connection and sub-device session, cuts every
// socket and shuts the broker down. Stored data is kept.
func (s *Server) stopLocked() {
	if s.broker == nil {
		return
	}
	s.mu.Lock()
	var cls []*mqtt.Client
	for cl, c := range s.conns {
		s.dropConnLocked(c)
		cls = append(cls, cl)
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, cl := range cls {
		cl.Stop(errStopped)
	}
	s.ln.shutdown()
	_ = s.broker.Close()
	s.broker, s.ln = nil, nil
}

// URL returns the broker URL for MQTT clients: "tcp://127.0.0.1:PORT", or
// "ssl://127.0.0.1:PORT" with WithTLS.
func (s *Server) URL() string {
	if s.serverTLS != nil {
		return "ssl://" + s.Addr()
	}
	return "tcp://" + s.Addr()
}

// Addr returns the listening address, "127.0.0.1:PORT" by default (the
// port actually bound when WithAddr asked for port 0). It stays the same
// across Stop, Start and Restart.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// TLSConfig returns a new client TLS configuration whose RootCAs trust the
// server certificate, or nil when the server was not created WithTLS.
func (s *Server) TLSConfig() *tls.Config {
	if s.clientTLS == nil {
		return nil
	}
	return s.clientTLS.Clone()
}

// Close stops the server for good and releases everything. Waiting RPC and
// GatewayRPC calls return ErrServerClosed. Close is idempotent.
func (s *Server) Close() {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.stopLocked()
	close(s.done)
}

// Stop stops listening and drops every connection (a plain TCP close, as a
// crashed or restarted server would), keeping all stored state: devices,
// telemetry, attributes, RPC counters and queued gateway RPCs. Sub-device
// sessions are closed, as ThingsBoard forgets them with the connection.
func (s *Server) Stop() {
	s.life.Lock()
	defer s.life.Unlock()
	s.stopLocked()
}

// Start listens again on the same address after Stop (retrying for up to 3 s
// while the port is still in use). It does nothing if the server is running
// and returns ErrServerClosed after Close.
func (s *Server) Start() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if s.broker != nil {
		return nil
	}
	return s.startLocked(s.Addr(), rebindRetry)
}

// Restart is Stop followed by Start.
func (s *Server) Restart() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	s.stopLocked()
	return s.startLocked(s.Addr(), rebindRetry)
}
