# Cap'n Proto RPC messages, as spoken by cloudflared's vendored go-capnproto2 v2 (PROTOCOL.md §3.4).
#
# This restates the standard rpc.capnp (Cap'n Proto project, MIT licence, same file id, names and
# ordinals, hence the same ids and the same wire layout) with one deliberate difference: the
# Exception struct has no `trace @4 :Text`. go-capnproto2's copy predates that field, so its
# Exception is 1 data word + 1 pointer; with `trace` the struct would grow a pointer and our Abort
# would no longer be byte-identical to cloudflared's. Everything else lays out exactly as upstream.
# Only the wire layout matters: RPC never puts struct ids on the wire.
@0xb312981b2552a250;

struct Message {
  union {
    unimplemented @0 :Message;      # echo of a message the sender did not understand
    abort @1 :Exception;            # the sender is closing the connection
    call @2 :Call;
    return @3 :Return;
    finish @4 :Finish;
    resolve @5 :Resolve;
    release @6 :Release;
    obsoleteSave @7 :AnyPointer;
    bootstrap @8 :Bootstrap;
    obsoleteDelete @9 :AnyPointer;
    provide @10 :Provide;
    accept @11 :Accept;
    join @12 :Join;
    disembargo @13 :Disembargo;
  }
}

struct Bootstrap {
  questionId @0 :UInt32;
  deprecatedObjectId @1 :AnyPointer;
}

struct Call {
  questionId @0 :UInt32;
  target @1 :MessageTarget;
  interfaceId @2 :UInt64;
  methodId @3 :UInt16;
  params @4 :Payload;
  sendResultsTo :union {
    caller @5 :Void;
    yourself @6 :Void;
    thirdParty @7 :AnyPointer;
  }
  allowThirdPartyTailCall @8 :Bool = false;
  noPromisePipelining @9 :Bool = false;
  onlyPromisePipeline @10 :Bool = false;
}

struct Return {
  answerId @0 :UInt32;
  releaseParamCaps @1 :Bool = true;
  union {
    results @2 :Payload;
    exception @3 :Exception;
    canceled @4 :Void;
    resultsSentElsewhere @5 :Void;
    takeFromOtherQuestion @6 :UInt32;
    acceptFromThirdParty @7 :AnyPointer;
  }
  noFinishNeeded @8 :Bool = false;
}

struct Finish {
  questionId @0 :UInt32;
  releaseResultCaps @1 :Bool = true;
  requireEarlyCancellationWorkaround @2 :Bool = true;
}

struct Resolve {
  promiseId @0 :UInt32;
  union {
    cap @1 :CapDescriptor;
    exception @2 :Exception;
  }
}

struct Release {
  id @0 :UInt32;
  referenceCount @1 :UInt32;
}

struct Disembargo {
  target @0 :MessageTarget;
  context :union {
    senderLoopback @1 :UInt32;
    receiverLoopback @2 :UInt32;
    accept @3 :Void;
    provide @4 :UInt32;
  }
}

struct Provide {
  questionId @0 :UInt32;
  target @1 :MessageTarget;
  recipient @2 :AnyPointer;
}

struct Accept {
  questionId @0 :UInt32;
  provision @1 :AnyPointer;
  embargo @2 :Bool;
}

struct Join {
  questionId @0 :UInt32;
  target @1 :MessageTarget;
  keyPart @2 :AnyPointer;
}

struct MessageTarget {
  union {
    importedCap @0 :UInt32;
    promisedAnswer @1 :PromisedAnswer;
  }
}

struct Payload {
  content @0 :AnyPointer;
  capTable @1 :List(CapDescriptor);
}

struct CapDescriptor {
  union {
    none @0 :Void;
    senderHosted @1 :UInt32;
    senderPromise @2 :UInt32;
    receiverHosted @3 :UInt32;
    receiverAnswer @4 :PromisedAnswer;
    thirdPartyHosted @5 :ThirdPartyCapDescriptor;
  }
  attachedFd @6 :UInt8 = 0xff;
}

struct PromisedAnswer {
  questionId @0 :UInt32;
  transform @1 :List(Op);

  struct Op {
    union {
      noop @0 :Void;
      getPointerField @1 :UInt16;
    }
  }
}

struct ThirdPartyCapDescriptor {
  id @0 :AnyPointer;
  vineId @1 :UInt32;
}

struct Exception {
  reason @0 :Text;
  obsoleteIsCallersFault @1 :Bool;
  obsoleteDurability @2 :UInt16;
  type @3 :Type;

  enum Type {
    failed @0;
    overloaded @1;
    disconnected @2;
    unimplemented @3;
  }
}
