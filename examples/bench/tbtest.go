package main

import (
	"context"
	"fmt"
	"slices"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// With -tbtest every run (and the device heap measurement) gets a fresh
// embedded tbtest server: the fake ThingsBoard consumes telemetry instead
// of forwarding it, so nothing subscribes; instead its storage is checked
// after the run, point by point, value by value. Its storage lives on the
// same heap, so heap figures include the server's.

// benchToken is the gateway access token of the embedded tbtest server.
const benchToken = "bench-token"

// startTbtest starts a tbtest server and points cfg at it.
func startTbtest(cfg *config) *tbtest.Server {
	srv := tbtest.NewServer(nil, tbtest.WithGateway(benchToken))
	cfg.Broker, cfg.Token = srv.URL(), benchToken
	return srv
}

// tokenOption authenticates the SDK with cfg.Token, when there is one.
func (c *config) tokenOption() []tbgateway.Option {
	if c.Token == "" {
		return nil
	}
	return []tbgateway.Option{tbgateway.WithAccessToken(c.Token)}
}

// pahoToken authenticates a raw paho client with cfg.Token, when there is one.
func (c *config) pahoToken(o *paho.ClientOptions) {
	if c.Token != "" {
		o.SetUsername(c.Token)
	}
}

// measureTbtest is measure against a fresh tbtest server.
func measureTbtest(ctx context.Context, cfg config, ds *dataset, name string) (*result, error) {
	srv := startTbtest(&cfg)
	defer srv.Close()
	p, err := setup(ctx, cfg, ds, name)
	if err != nil {
		return nil, err
	}
	defer p.close()

	t, err := timed(ctx, cfg, p, name, func() uint64 { return uint64(len(ballast)) })
	if err != nil {
		return nil, err
	}
	st := verifyStored(srv, ds)
	return t.result(name, ds, st, st.malformed+st.bad), nil
}

// verifyStored checks what srv stored against the dataset: every point of
// every device and key exactly once, at its timestamp, with its exact
// value and type. A point with a wrong value, an unknown timestamp or an
// extra key counts as bad; bytes are the telemetry payload bytes received.
// Refused messages count as malformed.
func verifyStored(srv *tbtest.Server, ds *dataset) verifyStats {
	var st verifyStats
	for _, m := range srv.Messages() {
		if m.Topic == topic {
			st.messages++
			st.bytes += int64(len(m.Payload))
		}
	}
	st.malformed = int64(len(srv.Rejections()))
	for d, dev := range ds.devices {
		keys := srv.TelemetryKeys(dev)
		for _, k := range keys {
			j := slices.Index(ds.keys, k)
			series := srv.Series(dev, k)
			if j < 0 {
				st.bad += int64(len(series))
				continue
			}
			seen := make([]bool, ds.entries)
			for _, p := range series {
				i := p.TS - baseTS
				if i < 0 || i >= int64(ds.entries) || !sameValue(p.Value, d, int(i), j) {
					st.bad++
					continue
				}
				if seen[i] {
					st.dups++
					continue
				}
				seen[i] = true
				st.unique++
			}
		}
	}
	return st
}

// sameValue reports whether v is the value of key j of entry i of device d,
// typed as ThingsBoard types it: a double for even keys, a long for odd.
func sameValue(v any, d, i, j int) bool {
	if j%2 == 0 {
		f, ok := v.(float64)
		return ok && f == floatValue(d, i, j)
	}
	n, ok := v.(int64)
	return ok && n == intValue(d, i, j)
}

// deviceHeapTbtest is deviceHeap against a fresh tbtest server.
func deviceHeapTbtest(ctx context.Context, cfg config) (deviceHeapResult, error) {
	srv := startTbtest(&cfg)
	defer srv.Close()
	r, err := deviceHeap(ctx, cfg)
	if err != nil {
		return r, err
	}
	if n := len(srv.Devices()) - 1; n != cfg.HeapDevices {
		return r, fmt.Errorf("tbtest holds %d sub-devices, want %d", n, cfg.HeapDevices)
	}
	return r, nil
}
