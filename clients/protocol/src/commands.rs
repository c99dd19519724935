//! Constructors for every command we send, so `type` and its sub-message are always set
//! together and every proto2 required field is filled.

use crate::proto::base_command::Type;
use crate::proto::*;

fn base(t: Type) -> BaseCommand {
    BaseCommand {
        r#type: t as i32,
        ..Default::default()
    }
}

/// "No request": the uint64 form of the -1 that Pulsar uses for broker-initiated commands.
pub const NO_REQUEST: u64 = u64::MAX;

pub fn connect(client_version: &str, protocol_version: i32) -> BaseCommand {
    BaseCommand {
        connect: Some(CommandConnect {
            client_version: client_version.into(),
            protocol_version: Some(protocol_version),
            ..Default::default()
        }),
        ..base(Type::Connect)
    }
}

pub fn connected(
    server_version: &str,
    protocol_version: i32,
    max_message_size: i32,
    features: FeatureFlags,
) -> BaseCommand {
    BaseCommand {
        connected: Some(CommandConnected {
            server_version: server_version.into(),
            protocol_version: Some(protocol_version),
            max_message_size: Some(max_message_size),
            feature_flags: Some(features),
        }),
        ..base(Type::Connected)
    }
}

pub fn ping() -> BaseCommand {
    BaseCommand {
        ping: Some(CommandPing {}),
        ..base(Type::Ping)
    }
}

/// Asks the client for fresh credentials (Pulsar's refresh sentinel as the challenge).
pub fn auth_challenge(server_version: &str, protocol_version: i32) -> BaseCommand {
    BaseCommand {
        auth_challenge: Some(CommandAuthChallenge {
            server_version: Some(server_version.into()),
            challenge: Some(AuthData {
                auth_method_name: Some("token".into()),
                auth_data: Some(bytes::Bytes::from_static(b"PulsarAuthRefresh")),
            }),
            protocol_version: Some(protocol_version),
        }),
        ..base(Type::AuthChallenge)
    }
}

/// A client's answer to AUTH_CHALLENGE.
pub fn auth_response(method: &str, data: &[u8]) -> BaseCommand {
    BaseCommand {
        auth_response: Some(CommandAuthResponse {
            client_version: Some("magnetar".into()),
            response: Some(AuthData {
                auth_method_name: Some(method.into()),
                auth_data: Some(bytes::Bytes::copy_from_slice(data)),
            }),
            protocol_version: Some(crate::PROTOCOL_VERSION),
        }),
        ..base(Type::AuthResponse)
    }
}

pub fn pong() -> BaseCommand {
    BaseCommand {
        pong: Some(CommandPong {}),
        ..base(Type::Pong)
    }
}

pub fn error(request_id: u64, error: ServerError, message: impl Into<String>) -> BaseCommand {
    BaseCommand {
        error: Some(CommandError {
            request_id,
            error: error as i32,
            message: message.into(),
        }),
        ..base(Type::Error)
    }
}

pub fn success(request_id: u64) -> BaseCommand {
    BaseCommand {
        success: Some(CommandSuccess {
            request_id,
            schema: None,
        }),
        ..base(Type::Success)
    }
}

pub fn partitioned_metadata_ok(request_id: u64, partitions: u32) -> BaseCommand {
    use command_partitioned_topic_metadata_response::LookupType;
    BaseCommand {
        partition_metadata_response: Some(CommandPartitionedTopicMetadataResponse {
            partitions: Some(partitions),
            request_id,
            response: Some(LookupType::Success as i32),
            error: None,
            message: None,
        }),
        ..base(Type::PartitionedMetadataResponse)
    }
}

pub fn partitioned_metadata_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    use command_partitioned_topic_metadata_response::LookupType;
    BaseCommand {
        partition_metadata_response: Some(CommandPartitionedTopicMetadataResponse {
            partitions: None,
            request_id,
            response: Some(LookupType::Failed as i32),
            error: Some(error as i32),
            message: Some(message.into()),
        }),
        ..base(Type::PartitionedMetadataResponse)
    }
}

pub fn lookup_connect(request_id: u64, url: &str, url_tls: Option<&str>) -> BaseCommand {
    use command_lookup_topic_response::LookupType;
    BaseCommand {
        lookup_topic_response: Some(CommandLookupTopicResponse {
            broker_service_url: Some(url.into()),
            broker_service_url_tls: url_tls.map(Into::into),
            response: Some(LookupType::Connect as i32),
            request_id,
            authoritative: Some(true),
            error: None,
            message: None,
            proxy_through_service_url: Some(false),
        }),
        ..base(Type::LookupResponse)
    }
}

/// A lookup answered elsewhere: the client asks `url` again (authoritative: that broker
/// is the owner, not one more hop).
pub fn lookup_redirect(
    request_id: u64,
    url: &str,
    url_tls: Option<&str>,
    authoritative: bool,
) -> BaseCommand {
    use command_lookup_topic_response::LookupType;
    BaseCommand {
        lookup_topic_response: Some(CommandLookupTopicResponse {
            broker_service_url: Some(url.into()),
            broker_service_url_tls: url_tls.map(Into::into),
            response: Some(LookupType::Redirect as i32),
            request_id,
            authoritative: Some(authoritative),
            error: None,
            message: None,
            proxy_through_service_url: Some(false),
        }),
        ..base(Type::LookupResponse)
    }
}

pub fn lookup_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    use command_lookup_topic_response::LookupType;
    BaseCommand {
        lookup_topic_response: Some(CommandLookupTopicResponse {
            response: Some(LookupType::Failed as i32),
            request_id,
            error: Some(error as i32),
            message: Some(message.into()),
            ..Default::default()
        }),
        ..base(Type::LookupResponse)
    }
}

pub fn producer_success(request_id: u64, name: &str, last_sequence_id: i64) -> BaseCommand {
    producer_success_with(request_id, name, last_sequence_id, None, true)
}

/// PRODUCER_SUCCESS naming the schema version the producer writes with.
pub fn with_schema_version(mut c: BaseCommand, version: Option<Vec<u8>>) -> BaseCommand {
    if let Some(p) = c.producer_success.as_mut() {
        p.schema_version = version.map(Into::into);
    }
    c
}

/// PRODUCER_SUCCESS with the topic epoch of an exclusive producer, or `ready = false` for a
/// producer queued behind another (WaitForExclusive; a second reply with `ready` follows).
pub fn producer_success_with(
    request_id: u64,
    name: &str,
    last_sequence_id: i64,
    topic_epoch: Option<u64>,
    ready: bool,
) -> BaseCommand {
    BaseCommand {
        producer_success: Some(CommandProducerSuccess {
            request_id,
            producer_name: name.into(),
            last_sequence_id: Some(last_sequence_id),
            schema_version: None,
            topic_epoch,
            producer_ready: Some(ready),
        }),
        ..base(Type::ProducerSuccess)
    }
}

pub fn send(producer_id: u64, sequence_id: u64, num_messages: i32) -> BaseCommand {
    BaseCommand {
        send: Some(CommandSend {
            producer_id,
            sequence_id,
            num_messages: Some(num_messages),
            ..Default::default()
        }),
        ..base(Type::Send)
    }
}

pub fn send_receipt(
    producer_id: u64,
    sequence_id: u64,
    highest_sequence_id: Option<u64>,
    ledger_id: u64,
    entry_id: u64,
) -> BaseCommand {
    BaseCommand {
        send_receipt: Some(CommandSendReceipt {
            producer_id,
            sequence_id,
            message_id: Some(message_id(ledger_id, entry_id)),
            highest_sequence_id,
        }),
        ..base(Type::SendReceipt)
    }
}

pub fn send_error(
    producer_id: u64,
    sequence_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        send_error: Some(CommandSendError {
            producer_id,
            sequence_id,
            error: error as i32,
            message: message.into(),
        }),
        ..base(Type::SendError)
    }
}

pub fn close_producer(producer_id: u64) -> BaseCommand {
    BaseCommand {
        close_producer: Some(CommandCloseProducer {
            producer_id,
            request_id: NO_REQUEST,
            ..Default::default()
        }),
        ..base(Type::CloseProducer)
    }
}

pub fn close_consumer(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(CommandCloseConsumer {
            consumer_id,
            request_id: NO_REQUEST,
            ..Default::default()
        }),
        ..base(Type::CloseConsumer)
    }
}

pub fn message_id(ledger_id: u64, entry_id: u64) -> MessageIdData {
    MessageIdData {
        ledger_id,
        entry_id,
        ..Default::default()
    }
}

pub fn message(
    consumer_id: u64,
    id: MessageIdData,
    redelivery_count: u32,
    ack_set: Vec<i64>,
) -> BaseCommand {
    BaseCommand {
        message: Some(CommandMessage {
            consumer_id,
            message_id: id,
            redelivery_count: (redelivery_count > 0).then_some(redelivery_count),
            ack_set,
            consumer_epoch: None,
        }),
        ..base(Type::Message)
    }
}

pub fn ack_response(consumer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        ack_response: Some(CommandAckResponse {
            consumer_id,
            request_id: Some(request_id),
            ..Default::default()
        }),
        ..base(Type::AckResponse)
    }
}

pub fn active_consumer_change(consumer_id: u64, is_active: bool) -> BaseCommand {
    BaseCommand {
        active_consumer_change: Some(CommandActiveConsumerChange {
            consumer_id,
            is_active: Some(is_active),
        }),
        ..base(Type::ActiveConsumerChange)
    }
}

pub fn reached_end_of_topic(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        reached_end_of_topic: Some(CommandReachedEndOfTopic { consumer_id }),
        ..base(Type::ReachedEndOfTopic)
    }
}

pub fn last_message_id_response(
    request_id: u64,
    last: MessageIdData,
    mark_delete: Option<MessageIdData>,
) -> BaseCommand {
    BaseCommand {
        get_last_message_id_response: Some(CommandGetLastMessageIdResponse {
            last_message_id: last,
            request_id,
            consumer_mark_delete_position: mark_delete,
        }),
        ..base(Type::GetLastMessageIdResponse)
    }
}

pub fn topics_of_namespace_response(request_id: u64, topics: Vec<String>) -> BaseCommand {
    BaseCommand {
        get_topics_of_namespace_response: Some(CommandGetTopicsOfNamespaceResponse {
            request_id,
            topics,
            filtered: Some(false),
            topics_hash: None,
            changed: Some(true),
        }),
        ..base(Type::GetTopicsOfNamespaceResponse)
    }
}

pub fn schema_not_found(request_id: u64) -> BaseCommand {
    BaseCommand {
        get_schema_response: Some(CommandGetSchemaResponse {
            request_id,
            error_code: Some(ServerError::TopicNotFound as i32),
            error_message: Some("Topic has no schema".into()),
            schema: None,
            schema_version: None,
        }),
        ..base(Type::GetSchemaResponse)
    }
}

pub fn get_or_create_schema_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        get_or_create_schema_response: Some(CommandGetOrCreateSchemaResponse {
            request_id,
            error_code: Some(error as i32),
            error_message: Some(message.into()),
            schema_version: None,
        }),
        ..base(Type::GetOrCreateSchemaResponse)
    }
}

pub fn get_or_create_schema_ok(request_id: u64, schema_version: Vec<u8>) -> BaseCommand {
    BaseCommand {
        get_or_create_schema_response: Some(CommandGetOrCreateSchemaResponse {
            request_id,
            error_code: None,
            error_message: None,
            schema_version: Some(schema_version.into()),
        }),
        ..base(Type::GetOrCreateSchemaResponse)
    }
}

pub fn get_schema_failed(
    request_id: u64,
    error: ServerError,
    message: impl Into<String>,
) -> BaseCommand {
    BaseCommand {
        get_schema_response: Some(CommandGetSchemaResponse {
            request_id,
            error_code: Some(error as i32),
            error_message: Some(message.into()),
            schema: None,
            schema_version: None,
        }),
        ..base(Type::GetSchemaResponse)
    }
}

pub fn get_schema_ok(request_id: u64, schema: Schema, schema_version: Vec<u8>) -> BaseCommand {
    BaseCommand {
        get_schema_response: Some(CommandGetSchemaResponse {
            request_id,
            error_code: None,
            error_message: None,
            schema: Some(schema),
            schema_version: Some(schema_version.into()),
        }),
        ..base(Type::GetSchemaResponse)
    }
}

pub fn consumer_stats_response(
    request_id: u64,
    stats: CommandConsumerStatsResponse,
) -> BaseCommand {
    BaseCommand {
        consumer_stats_response: Some(CommandConsumerStatsResponse {
            request_id,
            ..stats
        }),
        ..base(Type::ConsumerStatsResponse)
    }
}

pub fn consumer_stats_error(request_id: u64, error: ServerError, message: &str) -> BaseCommand {
    BaseCommand {
        consumer_stats_response: Some(CommandConsumerStatsResponse {
            request_id,
            error_code: Some(error as i32),
            error_message: Some(message.into()),
            ..Default::default()
        }),
        ..base(Type::ConsumerStatsResponse)
    }
}

/// The name of a command type for logs ("unknown(99)" for values we do not know).
pub fn type_name(t: i32) -> String {
    match Type::try_from(t) {
        Ok(t) => t.as_str_name().to_string(),
        Err(_) => format!("unknown({t})"),
    }
}
