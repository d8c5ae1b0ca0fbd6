package tbgateway

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
)

const (
	topicGatewayConnect    = "v1/gateway/connect"
	topicGatewayDisconnect = "v1/gateway/disconnect"
)

// Device is a handle on one device behind the gateway. It is cheap, safe
// for concurrent use, and stays valid after Disconnect: publishing through
// it again makes ThingsBoard reconnect the device implicitly.
type Device struct {
	g    *Gateway
	name string
}

// Name returns the device's ThingsBoard name.
func (d *Device) Name() string { return d.name }

// Profile returns the device profile it was connected with, "" when it is
// not connected through this gateway or was connected without a profile.
func (d *Device) Profile() string {
	d.g.mu.RLock()
	defer d.g.mu.RUnlock()
	return d.g.devices[d.name]
}

// ConnectOption configures Gateway.Connect.
type ConnectOption func(*connectConfig)

type connectConfig struct{ profile string }

// WithDeviceProfile names the device profile ThingsBoard gives the device
// when it creates it (sent as "type"; without it the server uses
// "default"). An existing device keeps its profile.
func WithDeviceProfile(profile string) ConnectOption {
	return func(c *connectConfig) { c.profile = profile }
}

// Connect announces a device behind the gateway on v1/gateway/connect
// (ThingsBoard creates it if needed) and returns its handle. It goes
// through the outbound queue, ahead of data queued after it, and blocks
// like Gateway.PublishTelemetry. Once the server acknowledged it, the
// gateway remembers the device and its profile and announces it again
// after every reconnect before any queued data.
func (g *Gateway) Connect(ctx context.Context, name string, opts ...ConnectOption) (*Device, error) {
	var c connectConfig
	for _, o := range opts {
		o(&c)
	}
	if err := checkDeviceName(name); err != nil {
		return nil, err
	}
	r := &outbox.Record{Topic: topicGatewayConnect, Body: encodeConnect(name, c.profile), DeviceName: name, Note: c.profile}
	if err := g.publish(ctx, r); err != nil {
		return nil, err
	}
	return &Device{g: g, name: name}, nil
}

// Device returns a handle for name without announcing it. ThingsBoard
// creates an unknown device with the "default" profile on its first data.
func (g *Gateway) Device(name string) *Device { return &Device{g: g, name: name} }

// Disconnect tells ThingsBoard on v1/gateway/disconnect that the device is
// gone; the server stops sending it RPCs and attribute updates until it is
// connected again or publishes data. Handlers registered for it stay. It
// blocks like Connect.
func (g *Gateway) Disconnect(ctx context.Context, name string) error {
	if err := checkDeviceName(name); err != nil {
		return err
	}
	e := getEncoder()
	defer e.release()
	e.buf = append(e.buf, `{"device":`...)
	e.buf = jsonx.AppendString(e.buf, name)
	e.buf = append(e.buf, '}')
	return g.publish(ctx, &outbox.Record{Topic: topicGatewayDisconnect, Body: e.payload(), DeviceName: name})
}

// Disconnect is Gateway.Disconnect for this device.
func (d *Device) Disconnect(ctx context.Context) error { return d.g.Disconnect(ctx, d.name) }

// DeviceInfo describes a connected device.
type DeviceInfo struct {
	Name    string
	Profile string // "" when connected without a profile
}

// Devices returns the devices connected through this gateway, by name.
func (g *Gateway) Devices() []DeviceInfo {
	g.mu.RLock()
	out := make([]DeviceInfo, 0, len(g.devices))
	for n, p := range g.devices {
		out = append(out, DeviceInfo{Name: n, Profile: p})
	}
	g.mu.RUnlock()
	slices.SortFunc(out, func(a, b DeviceInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// encodeConnect builds {"device":name[,"type":profile]}.
func encodeConnect(name, profile string) []byte {
	b := make([]byte, 0, len(name)+len(profile)+24)
	b = append(b, `{"device":`...)
	b = jsonx.AppendString(b, name)
	if profile != "" {
		b = append(b, `,"type":`...)
		b = jsonx.AppendString(b, profile)
	}
	return append(b, '}')
}

// onDisconnectNotice handles the server's MQTT 5 notice that a device's
// session was dropped ({"device":..,"reason":code}). Paho speaks MQTT 3.1.1,
// where ThingsBoard never sends it, but a plain broker may echo our own
// disconnects here; those carry no reason and are ignored.
func (g *Gateway) onDisconnectNotice(payload []byte) {
	var n struct {
		Device string `json:"device"`
		Reason *int   `json:"reason"`
	}
	if err := json.Unmarshal(payload, &n); err != nil {
		g.malformed(topicGatewayDisconnect, payload, err)
		return
	}
	if n.Reason == nil {
		g.stats.echoes.Add(1)
		return
	}
	g.log.Warn("tbgateway: server dropped device session", "device", n.Device, "reason", *n.Reason)
}
