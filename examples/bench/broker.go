package main

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

type embeddedBroker struct {
	url    string
	server *mochi.Server
}

// startBroker starts mochi on a free loopback port, with limits wide
// enough that the subscriber's backlog never makes it drop a message.
func startBroker() (*embeddedBroker, error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1 << 18
	caps.MaximumInflight = math.MaxUint16
	caps.ReceiveMaximum = math.MaxUint16
	s := mochi.New(&mochi.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: 64 << 10,
		ClientNetReadBufferSize:  64 << 10,
		Logger:                   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	l := listeners.NewTCP(listeners.Config{ID: "bench", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		return nil, err
	}
	if err := s.Serve(); err != nil {
		return nil, err
	}
	return &embeddedBroker{url: "tcp://" + l.Address(), server: s}, nil
}

func (b *embeddedBroker) Close() { _ = b.server.Close() }

// checkLoopback refuses a -broker that is not on loopback.
func checkLoopback(broker string) error {
	u, err := url.Parse(broker)
	if err != nil || u.Hostname() == "" {
		return fmt.Errorf("broker URL %q", broker)
	}
	if h := u.Hostname(); h != "localhost" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("broker %s is not on loopback: a load test floods it (use -allow-remote)", broker)
		}
	}
	return nil
}
