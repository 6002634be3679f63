use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::cache::artifact::{decode, test_artifact};
use crate::cache::{KeyFields, Lookup};
use crate::value::OutputKind;

/// A topic (text), a paraphrase (JSON) and a first response that quotes both, as rendered.
fn ticket() -> (Artifact, Artifact, Artifact) {
    let mut topic = test_artifact(1);
    topic.output = NodeOutput::Text("Switch from monthly to annual billing, please".into());
    let mut paraphrase = test_artifact(2);
    paraphrase.output = NodeOutput::Json(BTreeMap::from([
        ("subject".to_string(), "Billing switch".to_string()),
        (
            "body".to_string(),
            "Hello, I would like to move my plan to yearly billing. Ünïcode ok.".to_string(),
        ),
    ]));
    let mut response = test_artifact(3);
    response.upstream = vec![
        ("topic".into(), topic.key),
        ("paraphrase".into(), paraphrase.key),
    ];
    let values = [
        "Billing",
        "Switch from monthly to annual billing, please",
        "Billing switch",
        "Hello, I would like to move my plan to yearly billing. Ünïcode ok.",
    ];
    let parts = [
        "You work in ",
        ".\nAbout \"",
        "\".\nSubject: ",
        "\nBody:\n",
        "",
    ];
    let mut user = String::new();
    let mut fills = Vec::new();
    for (part, value) in parts.iter().zip(values) {
        user.push_str(part);
        fills.push((user.len() as u32, (user.len() + value.len()) as u32));
        user.push_str(value);
    }
    response.request.user = user;
    response.request.system = Some("You are Ana, a support agent.".into());
    response.request.layout = Some(RequestLayout {
        system: vec![(8, 11)],
        user: fills,
    });
    response.key_fields = Some(KeyFields {
        temperature: Some(0.3),
        top_p: None,
        max_tokens: None,
        seed: None,
        stop: None,
        response_format: None,
        extra_json: "{}".into(),
        output: OutputKind::Text,
        offline_bank: None,
        draw: 2,
    });
    (topic, paraphrase, response)
}

/// Lays `artifact` out against `answers`, keeping its shapes in `shapes`.
fn lay(
    artifact: &Artifact,
    answers: &[&Artifact],
    shapes: &mut HashMap<ShapeId, Arc<Shape>>,
) -> Vec<u8> {
    let laying = Laying::of(artifact);
    for (id, parts) in laying.shapes() {
        assert_eq!(decode_shape(&id, &encode_shape(parts)).unwrap(), parts);
        shapes.insert(id, Arc::new(parts.iter().map(|p| p.to_string()).collect()));
    }
    laying.encode(|key| answers.iter().find(|a| a.key == *key).map(|a| &a.output))
}

fn whole(artifact: &Artifact) -> Vec<u8> {
    let mut plain = artifact.clone();
    plain.request.layout = None;
    encode(&plain)
}

fn answer_in<'a>(answers: &'a [&'a Artifact]) -> impl Fn(&ArtifactKey) -> Option<NodeOutput> + 'a {
    |key| {
        answers
            .iter()
            .find(|a| a.key == *key)
            .map(|a| a.output.clone())
    }
}

#[test]
fn a_laid_out_request_joins_back_to_the_artifact_byte_for_byte() {
    let (topic, paraphrase, response) = ticket();
    let mut shapes = HashMap::new();
    let laid = lay(&response, &[&topic, &paraphrase], &mut shapes);
    // The template's text and the quoted answers are not in the entry.
    let text = String::from_utf8_lossy(&laid);
    assert!(!text.contains("Subject: "), "the shape is stored apart");
    assert!(
        !text.contains("annual billing"),
        "the topic is quoted by key"
    );
    assert!(
        !text.contains("yearly billing"),
        "the paraphrase's body is quoted by key"
    );
    assert!(
        text.contains("Billing switch"),
        "a short value is kept as text"
    );
    // A build reads its summary as from any entry.
    match decode::<ArtifactSummary>(&response.key, &laid) {
        Lookup::Hit(summary) => assert_eq!(*summary, response.summary()),
        Lookup::Miss(reason) => panic!("{reason:?}"),
    }
    let answers = [&topic, &paraphrase];
    let expanded = expand(&laid, |id| shapes.get(id).cloned(), answer_in(&answers)).unwrap();
    assert_eq!(expanded, whole(&response));
}

#[test]
fn without_fills_or_with_bad_ones_a_message_is_stored_whole() {
    let (topic, paraphrase, mut response) = ticket();
    let answers = [&topic, &paraphrase];
    for layout in [
        None,
        Some(RequestLayout {
            system: vec![(8, 11), (10, 12)],
            user: vec![(0, 1_000_000)],
        }),
        // Inside a character ("Ü" is two bytes).
        Some(RequestLayout {
            system: vec![],
            user: vec![(
                response.request.user.find('Ü').unwrap() as u32 + 1,
                response.request.user.len() as u32,
            )],
        }),
    ] {
        response.request.layout = layout;
        let mut shapes = HashMap::new();
        let laid = lay(&response, &answers, &mut shapes);
        // Only a message without values (all template text) has a shape: of one part.
        assert!(shapes.values().all(|parts| parts.len() == 1), "{shapes:?}");
        let expanded = expand(&laid, |id| shapes.get(id).cloned(), answer_in(&answers)).unwrap();
        assert_eq!(expanded, whole(&response));
    }
}

#[test]
fn quotes_are_written_out_before_their_answer_goes() {
    let (topic, paraphrase, response) = ticket();
    let mut shapes = HashMap::new();
    let laid = lay(&response, &[&topic, &paraphrase], &mut shapes);
    let shape = |id: &ShapeId| shapes.get(id).cloned();
    // Without the topic, the request cannot be joined back, and says why.
    let error = expand(&laid, shape, answer_in(&[&paraphrase])).unwrap_err();
    assert_eq!(error, LayoutError::Answer(topic.key.short()));
    let inlined = inline(&laid, &topic.key, &topic.output)
        .unwrap()
        .expect("changed");
    assert_eq!(inline(&inlined, &topic.key, &topic.output).unwrap(), None);
    let expanded = expand(&inlined, shape, answer_in(&[&paraphrase])).unwrap();
    assert_eq!(expanded, whole(&response));
    let inlined = inline(&inlined, &paraphrase.key, &paraphrase.output)
        .unwrap()
        .expect("changed");
    assert_eq!(expand(&inlined, shape, |_| None).unwrap(), whole(&response));
}

#[test]
fn a_missing_or_changed_shape_is_caught() {
    let (topic, paraphrase, response) = ticket();
    let answers = [&topic, &paraphrase];
    let mut shapes = HashMap::new();
    let laid = lay(&response, &answers, &mut shapes);
    let error = expand(&laid, |_| None, answer_in(&answers)).unwrap_err();
    assert!(matches!(error, LayoutError::Shape(_)), "{error}");
    // A stored shape whose text changed no longer hashes to its id.
    let (id, parts) = shapes.iter().find(|(_, p)| p.len() == 5).unwrap();
    let mut changed: Vec<&str> = parts.iter().map(String::as_str).collect();
    changed[0] = "You work at ";
    assert_eq!(decode_shape(id, &encode_shape(&changed)), None);
    // One with a part too few cannot be joined.
    let short = Arc::new(parts[..4].to_vec());
    let error = expand(
        &laid,
        |i| {
            if i == id {
                Some(short.clone())
            } else {
                shapes.get(i).cloned()
            }
        },
        answer_in(&answers),
    )
    .unwrap_err();
    assert!(matches!(error, LayoutError::Parts(_, 4, 4)), "{error}");
}
