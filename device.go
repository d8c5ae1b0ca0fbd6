package tbgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
)

const (
	topicGatewayConnect    = "v1/gateway/connect"
	topicGatewayDisconnect = "v1/gateway/disconnect"
)

// Device is a handle on one device behind the gateway. It is cheap, safe
// for concurrent use, and stays valid after Disconnect: publishing through
// it again makes ThingsBoard reconnect the device implicitly. Its verbs
// are those of every device handle (GatewayDevice has the same).
type Device struct{ handle }

// Name returns the device's ThingsBoard name; after ThingsBoard renamed
// the device (DeviceRenamed), the new one.
func (d *Device) Name() string {
	name, _ := d.current()
	return name
}

// Profile returns the device profile it was connected with, "" when it is
// not connected through this gateway or was connected without a profile.
func (d *Device) Profile() string {
	p, _ := d.g.reg.profile(d.name)
	return p
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
	return g.Device(name), nil
}

// Device returns a handle for name without announcing it. ThingsBoard
// creates an unknown device with the "default" profile on its first data.
func (g *Gateway) Device(name string) *Device {
	return &Device{handle{g: g, name: name, quoted: string(jsonx.AppendString(nil, name))}}
}

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
func (d *Device) Disconnect(ctx context.Context) error { return d.g.Disconnect(ctx, d.Name()) }

// DeviceInfo describes a connected device.
type DeviceInfo struct {
	Name    string
	Profile string // "" when connected without a profile
}

// Devices returns the devices connected through this gateway, by name.
func (g *Gateway) Devices() []DeviceInfo { return g.reg.list() }

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

// DeviceEventKind says what happened to a device on the server's side.
type DeviceEventKind int

// Kinds of DeviceEvent.
const (
	// DeviceRenamed: renamed in ThingsBoard (gateway_device_renamed). The
	// gateway sends its data under NewName from now on, handlers included.
	DeviceRenamed DeviceEventKind = iota + 1
	// DeviceDeleted: deleted in ThingsBoard (gateway_device_deleted). The
	// gateway forgets it; new data would create it again.
	DeviceDeleted
	// DeviceDropped: the server closed the device's session (the MQTT 5
	// v1/gateway/disconnect notice); Reason is the MQTT 5 reason code.
	DeviceDropped
)

// DeviceEvent is a notice from ThingsBoard about a device behind the
// gateway.
type DeviceEvent struct {
	Kind    DeviceEventKind
	Device  string
	NewName string // DeviceRenamed only
	Reason  int    // DeviceDropped only
}

func (g *Gateway) deviceEvent(e DeviceEvent) {
	if f := g.opts.onDevice; f != nil {
		if !g.lanes.events.Submit(func() { f(e) }) {
			g.stats.eventsLost.Add(1)
		}
	}
}

// Server-generated RPCs to the gateway itself about devices behind it.
const (
	methodDeviceRenamed = "gateway_device_renamed"
	methodDeviceDeleted = "gateway_device_deleted"
)

// onDeviceNotice handles gateway_device_renamed ({"old":"new"}) and
// gateway_device_deleted ("name") before any user handler sees them.
func (g *Gateway) onDeviceNotice(req *RPCRequest) error {
	switch req.Method {
	case methodDeviceRenamed:
		var names map[string]string
		if err := json.Unmarshal(req.Params, &names); err != nil || len(names) == 0 {
			return fmt.Errorf("%w: %s params %s", ErrMalformedReply, req.Method, req.Params)
		}
		for old, renamed := range names {
			if renamed == "" {
				continue
			}
			if profile, connected := g.renameDevice(old, renamed); connected {
				// Open the session under the new name so that its RPCs
				// and attribute updates keep coming.
				r := &outbox.Record{Topic: topicGatewayConnect, Body: encodeConnect(renamed, profile), DeviceName: renamed, Note: profile}
				if err := g.enqueue(g.life.ctx, r.Alone(), nil); err != nil {
					return err
				}
			}
			g.log.Info("tbgateway: device renamed in ThingsBoard", "device", old, "new_name", renamed)
			g.deviceEvent(DeviceEvent{Kind: DeviceRenamed, Device: old, NewName: renamed})
		}
	case methodDeviceDeleted:
		var name string
		if err := json.Unmarshal(req.Params, &name); err != nil || name == "" {
			return fmt.Errorf("%w: %s params %s", ErrMalformedReply, req.Method, req.Params)
		}
		g.reg.remove(name)
		g.hs.forget(name)
		g.log.Info("tbgateway: device deleted in ThingsBoard", "device", name)
		g.deviceEvent(DeviceEvent{Kind: DeviceDeleted, Device: name})
	}
	return nil
}

// renameDevice moves everything the gateway keeps under old to renamed,
// and makes handles of old send under the new name. It reports whether the
// device was connected, and with which profile.
func (g *Gateway) renameDevice(old, renamed string) (profile string, connected bool) {
	g.hs.rename(old, renamed)
	return g.reg.rename(old, renamed)
}

// onDisconnectNotice handles the server's MQTT 5 notice that a device's
// session was dropped ({"device":..,"reason":code}). Paho speaks MQTT 3.1.1,
// where ThingsBoard never sends it, but a plain broker may echo our own
// disconnects here; those carry no reason and are ignored.
func (g *Gateway) onDisconnectNotice(payload []byte) {
	device, reason, echo, err := decodeDisconnectNotice(payload)
	switch {
	case echo:
		g.stats.echoes.Add(1)
	case err != nil:
		g.malformed(topicGatewayDisconnect, payload, err)
	default:
		g.log.Warn("tbgateway: server dropped device session", "device", device, "reason", reason)
		g.deviceEvent(DeviceEvent{Kind: DeviceDropped, Device: device, Reason: reason})
	}
}

func decodeDisconnectNotice(payload []byte) (device string, reason int, echo bool, err error) {
	var n struct {
		Device string `json:"device"`
		Reason *int   `json:"reason"`
	}
	if err := json.Unmarshal(payload, &n); err != nil {
		return "", 0, false, err
	}
	if n.Reason == nil {
		return "", 0, true, nil
	}
	if n.Device == "" {
		return "", 0, false, fmt.Errorf("notice without device")
	}
	return n.Device, *n.Reason, false, nil
}

// refreshLoop re-announces devices that sent nothing for the refresh
// interval: ThingsBoard closes a sub-device session after 10 minutes
// without uplinks, and the device then gets no RPC or attribute updates.
// A refused enqueue (a full queue under FailFast) skips one round.
func (g *Gateway) refreshLoop() {
	every := g.opts.sessionRefresh / 4
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-g.life.done:
			return
		case <-t.C:
		}
		for _, d := range g.reg.quiet(time.Now().Add(-g.opts.sessionRefresh).UnixNano()) {
			r := &outbox.Record{Topic: topicGatewayConnect, Body: encodeConnect(d.Name, d.Profile), DeviceName: d.Name, Note: d.Profile}
			if err := g.enqueue(g.life.ctx, r.Alone(), nil); err != nil {
				if g.closed() {
					return
				}
				g.log.Warn("tbgateway: session refresh skipped", "device", d.Name, "err", err)
				break
			}
			g.stats.refreshed.Add(1)
		}
	}
}
