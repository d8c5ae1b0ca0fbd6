// Package tbgateway is a client for the ThingsBoard MQTT Gateway API: one
// MQTT connection, authenticated as a ThingsBoard gateway device, that
// carries telemetry, attributes, RPC and claims for the many devices behind
// it, plus the gateway's own device API (v1/devices/me/*).
//
//	gw, err := tbgateway.Dial(ctx, "tcp://thingsboard:1883", tbgateway.WithAccessToken(token))
//	if err != nil { ... }                 // a refused CONNECT is a *ConnectError
//	defer gw.Close(ctx)
//	pump, err := gw.Connect(ctx, "Pump 7", tbgateway.WithDeviceProfile("pump"))
//	err = pump.PublishTelemetry(ctx, tbgateway.At(time.Now(), tbgateway.Values{"rpm": 1450}))
//
// Every call that waits takes a context; requests without a deadline get
// WithRequestTimeout, because ThingsBoard sends no reply when a request
// fails on its side. Errors are sentinels (ErrClosed, ErrQueueFull,
// ErrConnectionLost, ErrInvalidValue, ...) and typed errors (*ValueError,
// *PayloadTooLargeError, *ConnectError, *RPCError) for errors.Is and
// errors.As. Logs go to WithLogger's log/slog logger.
//
// # Handles and verbs
//
// A *Device (Gateway.Connect, Gateway.Device) stands for one device behind
// the gateway; the *GatewayDevice from Gateway.Self for the gateway's own
// device. Both have the same verbs, written once: PublishTelemetry,
// PublishAttributes, their Async twins (the callback last), RequestAttributes,
// Claim, OnRPC and OnAttributeUpdate. The Gateway adds what spans devices:
// PublishTelemetry and PublishAttributes of many devices in one message,
// Claim of several, the gateway-wide OnRPC and OnAttributeUpdate for every
// device without a handler of its own, Connect and Disconnect, Stats and
// Close.
//
// # Values
//
// Values maps keys to bool, string, any integer or float type, json.Number,
// json.RawMessage or a nested JSON value; Point (Int, Float64, String, ...)
// is the allocation-free form for streaming. Payloads are built the way the
// server parses them: an integer stays an integer, a float always carries a
// decimal point (3.0, or ThingsBoard stores a long), and a float is written
// with at most 16 decimals of scale, because ThingsBoard stores a number of
// larger scale as a string. A float whose shortest exact form needs more is
// rounded to 16 decimals, at most 1e-16 off (0.1+0.2 is written 0.3; a
// magnitude below 0.5e-16 is written as 0.0). Bad input (an empty device
// name, a reserved key, NaN, a payload larger than the server accepts) fails
// with a typed error before anything is sent: nothing the server would
// answer by closing the connection leaves the process.
//
// # The outbound path
//
// Every publish goes one way: it is validated and encoded into records, put
// into the outbound queue, packed by the sender's goroutine into messages up
// to the server's maximum payload size (the telemetry and attributes of
// concurrent calls and of many devices merge into one v1/gateway/* message,
// WithCoalescing; a message that is not full waits while an eighth of the
// in-flight window is unacknowledged, so trickling data still goes out in
// large messages), paced under the rate limits and tracked until its PUBACK.
// At most WithMaxInflight messages are unacknowledged at once.
//
// A synchronous call returns when the server acknowledged all of its data,
// or when ctx ends: then the error wraps ErrEnqueued and the data stays
// queued. An Async call returns once its data is accepted into the queue
// (and written to the store, see below) and reports the outcome to its
// callback, on an ordered lane of the gateway. While more outcomes wait for
// their callback than the queue holds records, the sender and the Async
// calls are held back, as by a full queue.
//
// The queue is bounded (WithQueue, 10,000 records and 64 MiB by default)
// with an overflow policy: OverflowBlock waits for room until ctx ends,
// OverflowFailFast returns ErrQueueFull, OverflowDropOldest evicts the
// oldest data (its calls get ErrDropped; Stats.Dropped). WithMaxAge drops
// data that waited longer than a maximum age (ErrExpired; Stats.Expired).
// While the connection is down data waits in the queue; requests that wait
// for a reply fail with ErrConnectionLost when the connection drops.
// WithOfflineStart lets Dial return before the first connection.
//
// # Rate limits
//
// On every connection the gateway asks the server for its limits with the
// getSessionLimits RPC (off with WithoutSessionLimits, or set them with
// WithRateLimits) and paces its messages, data points and device connects
// so that no limit is breached: ThingsBoard closes the connection of a
// gateway that breaches one. Pacing uses WithRateLimitMargin of each limit
// (0.9 by default), so that clock differences never cause a breach. The
// gateway's own traffic and that of the devices behind it have separate
// buckets, as on the server. A merged message costs one telemetry message
// per device in it, and every device new on a connection two messages more
// for its implicit connect (three for an explicit one), as the server
// counts them.
//
// # The connection's life
//
// One goroutine of the gateway owns the connection and moves it through
// these states, each connection with a new MQTT client and a clean
// session:
//
//	connecting → starting → up → waiting (back-off) → connecting → …
//
// Starting subscribes to the downlink topics and asks getSessionLimits,
// both at once, and on the first connection waits for the SUBACK and the
// answer (at most DefaultLimitsWait; a plain MQTT broker is recognised at
// once), so that data is paced under the server's limits from its first
// byte; later connections send at once under the limits last applied. Up
// releases the sender. On every new connection the sender announces each
// device connected through the gateway (v1/gateway/connect, with its
// profile) right before that device's first data, so no data reaches the
// server ahead of its device's connect, and devices with nothing to send
// are announced in between; recovery therefore takes a few round trips
// plus one per in-flight window of devices. When a connection ends,
// whatever it never acknowledged is taken back, in order, and sent again on
// the next one behind the announcements (at least once: it may reach the
// server twice, counted in Stats.Resent). A link on which nothing arrives
// for 1.5 × keep-alive is presumed dead and cut (Stats.HalfOpen). Attempts
// back off exponentially with jitter from 250 ms up to
// WithMaxReconnectDelay, and start over once a connection stayed up for
// 2 s. WithConnectionListener is told of StateUp, StateDown and
// StateReconnecting, in order. ThingsBoard closes the session of a device
// that sent nothing for 10 minutes; WithSessionRefresh announces quiet
// devices again before that.
//
// # Store and forward
//
// WithQueueStore keeps the queue in a QueueStore as well as in memory:
// every record is appended before its call returns (or is accepted, for
// the Async calls), removed once acknowledged, and whatever is left at Dial
// is sent first. Package durable is the store tbgateway ships: a
// checksummed, segmented log that a damaged file can never crash (it
// reports a *durable.DamageError, or salvages what it can with
// durable.WithRecover; Stats.Salvaged and Stats.LostOnDisk), at two
// durability levels (durable.SyncOS, safe from a crash of the process, and
// durable.SyncDisk, safe from a power cut). A program that never imports it
// does not link it.
//
// # Handlers
//
// RPC handlers (RPCHandler, RPCHandlerFunc; RPCMux routes by method) and
// attribute-update handlers (AttributeHandler, AttributeHandlerFunc) run on
// the gateway's own goroutines, never on the MQTT network goroutine, so a
// slow or panicking handler cannot stall the connection. Updates run one
// at a time in arrival order; RPCs on WithHandlerQueue's workers. Both
// lanes are bounded in count and bytes (WithHandlerQueue,
// WithHandlerQueueBytes): an update that finds its lane full is dropped, an
// RPC is answered with an error (Stats.HandlerDropped). A panic is
// recovered (Stats.HandlerPanics; an RPC gets an error reply). An RPC
// delivered again while its handler still runs is dropped
// (Stats.DuplicateRPCs). A device's own handler takes precedence over the
// gateway-wide one. The server's notices about devices behind the gateway
// (gateway_device_renamed, gateway_device_deleted) are acted on by the
// gateway itself: a renamed device keeps its handlers and handles, and
// WithDeviceListener is told.
//
// # Provisioning and updates
//
// Provision asks ThingsBoard for a new device's (or gateway's) credentials
// with a device profile's provision key and secret, and returns them
// ready for Dial. WithUpdates installs the firmware and software
// ThingsBoard assigns to the gateway itself: downloaded in chunks of the
// server's maximum payload size, resumed across reconnects, verified
// against every checksum algorithm ThingsBoard offers, applied by the
// application's UpdateHandler, each step reported as fw_state. Devices
// behind the gateway get no download topic from the server; their
// assignments reach OnDevicePackage as a typed Package, and
// Device.ReportUpdateState reports their steps. Note that ThingsBoard
// stores a version string that looks like a number ("1.0") as a number.
//
// # Plain MQTT brokers
//
// The gateway also runs against a plain broker (Mosquitto, mochi), for
// tests and bridges. Such a broker sends the gateway's own publishes on
// the two-way topics back to it; those echoes are recognised by their
// shape, or by a short memory of recent publishes, and ignored
// (Stats.Echoes).
//
// # Poison messages
//
// A message that the server answers by closing the connection, again right
// after each time it is sent, would block the queue for good. The gateway
// notices it (WithPoisonThreshold losses in a row with the same message
// oldest in flight, shortly after sending it, while nothing else is
// acknowledged), retries its records one by one, since coalescing may have
// packed innocent data with it, and sets aside a record that still brings
// the connection down (ErrPoisonMessage, Gateway.PoisonMessages).
package tbgateway
