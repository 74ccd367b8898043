"""images and list semantics through the official client."""

from __future__ import annotations

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, instance_resource, unique

IMG_PROJECT = "lg-images"


def test_family_returns_newest_non_deprecated(compute, image_dir):
    family = unique("fam")
    for name in ("img-a", "img-b"):
        compute.images.insert(
            project=IMG_PROJECT,
            image_resource=compute_v1.Image(
                name=f"{family}-{name}",
                family=family,
                raw_disk=compute_v1.RawDisk(source=f"file://{image_dir}"),
            ),
        ).result()
    assert (
        compute.images.get_from_family(project=IMG_PROJECT, family=family).name == f"{family}-img-b"
    )
    compute.images.deprecate(
        project=IMG_PROJECT,
        image=f"{family}-img-b",
        deprecation_status_resource=compute_v1.DeprecationStatus(state="DEPRECATED"),
    ).result()
    assert (
        compute.images.get_from_family(project=IMG_PROJECT, family=family).name == f"{family}-img-a"
    )
    names = [i.name for i in compute.images.list(project=IMG_PROJECT)]
    assert {f"{family}-img-a", f"{family}-img-b"} <= set(names)
    compute.images.delete(project=IMG_PROJECT, image=f"{family}-img-a").result()
    with pytest.raises(exceptions.NotFound):
        compute.images.get_from_family(project=IMG_PROJECT, family=family)


def test_image_source_must_be_a_local_image_dir(compute, tmp_path):
    with pytest.raises(exceptions.BadRequest):
        compute.images.insert(
            project=IMG_PROJECT,
            image_resource=compute_v1.Image(
                name=unique("bad"), raw_disk=compute_v1.RawDisk(source=str(tmp_path))
            ),
        )


def test_list_filters_and_pages(compute, image):
    zone = "lg-list-zone"
    names = sorted(unique("ls") for _ in range(3))
    for name in names:
        compute.instances.insert(
            project=PROJECT, zone=zone, instance_resource=instance_resource(name, image)
        ).result()
    compute.instances.stop(project=PROJECT, zone=zone, instance=names[0]).result()
    pager = compute.instances.list(
        request=compute_v1.ListInstancesRequest(project=PROJECT, zone=zone, max_results=1)
    )
    assert [i.name for i in pager] == names  # the pager followed nextPageToken
    running = compute.instances.list(
        request=compute_v1.ListInstancesRequest(
            project=PROJECT, zone=zone, filter="status = RUNNING"
        )
    )
    assert [i.name for i in running] == names[1:]
    by_name = compute.instances.list(
        request=compute_v1.ListInstancesRequest(
            project=PROJECT, zone=zone, filter=f'(name = "{names[2]}") AND (status != TERMINATED)'
        )
    )
    assert [i.name for i in by_name] == [names[2]]
    for name in names:
        compute.instances.delete(project=PROJECT, zone=zone, instance=name).result()
    assert list(compute.instances.list(project=PROJECT, zone=zone)) == []


def test_project_metadata_and_any_project(compute):
    project = unique("newproj")
    got = compute.projects.get(project=project)
    assert got.name == project and int(got.id) > 0
    compute.projects.set_common_instance_metadata(
        project=project,
        metadata_resource=compute_v1.Metadata(
            fingerprint=got.common_instance_metadata.fingerprint,
            items=[compute_v1.Items(key="team", value="ml")],
        ),
    ).result()
    items = compute.projects.get(project=project).common_instance_metadata.items
    assert [(i.key, i.value) for i in items] == [("team", "ml")]
    assert compute.projects.get(project=project).id == got.id  # stable numeric id
    _ = ZONE
